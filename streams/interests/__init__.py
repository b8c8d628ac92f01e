"""The interests engine (streaming PinnerSage), pure numpy: no I/O, no Kafka.

``clusters`` holds the algorithm (``InterestClusters``), ``config`` its parameters, ``interest``
what it answers, ``kernels`` the numeric kernels it runs on, ``state_format`` the byte format
of a state (whose constants tests import from there). Other code imports from here.
"""

from streams.interests.clusters import InterestClusters
from streams.interests.config import DAY_MS, DEFAULT_ACTION_WEIGHTS, InterestConfig
from streams.interests.interest import Interest, KeptActions, Summary
from streams.interests.kernels import medoid_of, unit, ward_labels
from streams.interests.state_format import StateFormatError

__all__ = [
    "DAY_MS",
    "DEFAULT_ACTION_WEIGHTS",
    "Interest",
    "InterestClusters",
    "InterestConfig",
    "KeptActions",
    "StateFormatError",
    "Summary",
    "medoid_of",
    "unit",
    "ward_labels",
]
