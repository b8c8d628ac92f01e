"""The interests engine (streaming PinnerSage), pure numpy: no I/O, no Kafka.

``clusters`` holds the algorithm (``InterestClusters``), ``config`` its parameters, ``interest``
what it answers, ``kernels`` the numeric kernels it runs on. Other code imports from here.
"""

from streams.interests.clusters import (
    FORMAT_VERSION,
    STATE_HEADER,
    InterestClusters,
    StateFormatError,
)
from streams.interests.config import DAY_MS, DEFAULT_ACTION_WEIGHTS, InterestConfig
from streams.interests.interest import Interest, InterestSummary
from streams.interests.kernels import medoid_of, unit, ward_labels

__all__ = [
    "DAY_MS",
    "DEFAULT_ACTION_WEIGHTS",
    "FORMAT_VERSION",
    "STATE_HEADER",
    "Interest",
    "InterestClusters",
    "InterestConfig",
    "InterestSummary",
    "StateFormatError",
    "medoid_of",
    "unit",
    "ward_labels",
]
