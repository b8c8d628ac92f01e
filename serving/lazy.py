"""Package attributes loaded on first use (PEP 562), for packages whose re-exports are heavy.

The command line reads config objects' defaults for its help texts: a package that re-exports
its runtime (stores, indexes, Kafka clients, scipy) would load all of it for ``--help``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, module_of: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``module_of[name]`` when ``name``
    is first read, and keeps the value in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name]), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
