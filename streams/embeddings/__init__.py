"""Collaborative item embeddings learned from the engagement stream, pure numpy/scipy: no I/O.

``coengagement`` keeps decayed item-item co-engagement statistics, one event at a time
(``CoEngagement.learn_one``); ``refit`` turns a snapshot of them into unit item vectors
(``ItemEmbedding.fit``: truncated SVD of a shifted PPMI matrix); ``config`` holds the settings of
both. Import each from its module: the package loads nothing (scipy is for the models only).
"""
