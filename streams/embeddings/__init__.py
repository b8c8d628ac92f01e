"""Collaborative item embeddings learned from the engagement stream, pure numpy/scipy: no I/O.

``coengagement`` keeps decayed item-item co-engagement statistics, one event at a time
(``CoEngagement.learn_one``); ``refit`` turns a snapshot of them into unit item vectors
(``ItemEmbedding.fit``: truncated SVD of a shifted PPMI matrix).
"""

from streams.embeddings.coengagement import CoEngagement, CoEngagementConfig, CoOccurrence
from streams.embeddings.refit import ItemEmbedding, RefitConfig, ppmi

__all__ = [
    "CoEngagement",
    "CoEngagementConfig",
    "CoOccurrence",
    "ItemEmbedding",
    "RefitConfig",
    "ppmi",
]
