"""The interests engine (streaming PinnerSage), pure numpy: no I/O, no Kafka.

``clusters`` holds the algorithm (``InterestClusters``), ``config`` its parameters, ``kernels``
the numeric kernels it runs on; what other code imports comes from here.
"""

from streams.interests.clusters import (
    FORMAT_VERSION,
    STATE_HEADER,
    InterestClusters,
    StateFormatError,
)
from streams.interests.config import DAY_MS, DEFAULT_ACTION_WEIGHTS, InterestConfig
from streams.interests.kernels import medoid_of, unit, ward_labels

__all__ = [
    "DAY_MS",
    "DEFAULT_ACTION_WEIGHTS",
    "FORMAT_VERSION",
    "STATE_HEADER",
    "InterestClusters",
    "InterestConfig",
    "StateFormatError",
    "medoid_of",
    "unit",
    "ward_labels",
]
