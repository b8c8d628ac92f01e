"""Small helpers shared by the benchmarks (argument parsing, JSON output, timing)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> Any:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small size, under 60 s")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The one JSON line on stdout, last."""
    sys.stdout.write(json.dumps(result, sort_keys=False) + "\n")
    sys.stdout.flush()


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def percentile_ms(samples_s: list[float], q: float) -> float:
    if not samples_s:
        return float("nan")
    ordered = sorted(samples_s)
    idx = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return round(ordered[idx] * 1000.0, 3)


def start_recstream(
    args: Sequence[str], log: IO[bytes], env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``recstream ARGS`` (e.g. ``serve ...``, ``worker interests ...``) as a child process
    with the embedded broker's settings (``EMBEDDED_ENV``) and ``env`` on top, output to
    ``log``."""
    from streams.broker import EMBEDDED_ENV

    return subprocess.Popen(
        [sys.executable, "-m", "serving.cli", *args],
        env={**os.environ, **EMBEDDED_ENV, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
