"""Datasets for the demo, the tests, the benchmarks and the offline evaluation (no product code).

- ``generated``: a synthetic catalogue and engagement log with known ground truth
  (``recstream generate``).
- ``movielens``: MovieLens 100k as recstream events, fetched and cached on first use.
- ``vectors``: clustered unit vectors for tests and benchmarks of the item index.
"""
