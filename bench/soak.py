"""Soak: the whole system at a steady moderate load for N minutes; does anything grow?

The system is the chaos run's (``bench/_system.py``): the embedded broker, the encoder worker,
two interests workers (each with its engine process) and two serving replicas. The load
(``bench/_load.py``): 50 engagements a second from 50 users, 30 recommendation requests a
second, a new item every 5 s over a catalogue of 1,000. The users' states reach the engine's
cap (500 actions) after 25,000 events, about 8 minutes: from minute 10 on, the data each
process holds stays the same size, and what still grows is a leak. Every ``--sample-s``
seconds (30) it samples:

- the resident memory (RSS) of every process;
- the broker's CPU (share of one core over the interval);
- freshness: publish -> the ``user-interests`` record naming the event, p99 over the interval;
- the query latency p99 over the interval (the client's, open loop) and its availability.

It reports each series' slope (least squares, per minute) and ``soak_rss_growth_max``: the
largest relative RSS growth of any recstream process between minute 10 and minute 30 (of the
fitted line; for a run of another length, between its first third and its end). The embedded
broker keeps every record in memory (memory storage), so its memory grows with the log by
design: it is reported apart (``soak_broker_rss_growth``) and not in the max. The baseline,
in the same run, is each series' first sample.

Prints one JSON line; a run of 30 minutes or more draws docs/soak.png and writes its table
into docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, progress
from bench._load import OUTPUTS, SteadyLoad, freshness_s, percentile_ms
from bench._system import System, iter_rss_mb

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
PLOT = REPO / "docs" / "soak.png"
RESULTS = REPO / "bench" / "results"  # not in git
TABLE_BEGIN, TABLE_END = "<!-- soak table: begin -->", "<!-- soak table: end -->"


@dataclass
class Series:
    """Samples of the run: minutes since the load started, and each measure at those times."""

    minutes: list[float] = field(default_factory=list)
    rss_mb: dict[str, list[float | None]] = field(default_factory=dict)
    broker_cpu: list[float | None] = field(default_factory=list)
    freshness_p99_ms: list[float | None] = field(default_factory=list)
    query_p99_ms: list[float | None] = field(default_factory=list)
    availability: list[float | None] = field(default_factory=list)
    exits: list[dict[str, Any]] = field(default_factory=list)  # roles that exited by themselves

    def add_rss(self, rss: dict[str, float]) -> None:
        n = len(self.minutes)  # the new sample's index, already appended
        for name in rss.keys() | self.rss_mb.keys():
            column = self.rss_mb.setdefault(name, [None] * (n - 1))
            column.append(round(rss[name], 1) if name in rss else None)


def fit(xs: list[float], ys: list[float | None]) -> tuple[float, float] | None:
    """(slope, intercept) of the least-squares line through the samples that have a value."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if len(pts) < 2:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def growth(xs: list[float], ys: list[float | None], start: float, end: float) -> float | None:
    """Relative growth of the fitted line from ``start`` to ``end`` (minutes), over the samples
    from ``start`` on."""
    window = [(x, y) for x, y in zip(xs, ys, strict=True) if x >= start - 1e-9]
    line = fit([x for x, _ in window], [y for _, y in window])
    if line is None:
        return None
    slope, intercept = line
    at_start = slope * start + intercept
    return round((slope * end + intercept - at_start) / at_start, 4) if at_start > 0 else None


def sample_loop(system: System, load: SteadyLoad, minutes: float, every_s: float) -> Series:
    series = Series()
    broker = psutil.Process(system.broker_pid)
    broker.cpu_percent(None)
    queries, engagements, tail = load.queries, load.engagements, load.tail
    assert queries is not None and engagements is not None
    start = load.started
    end = start + minutes * 60.0
    next_at = start + every_s
    last = start
    while next_at <= end + 1e-6:
        while time.monotonic() < next_at:
            series.exits += system.restart_crashed(start)
            time.sleep(0.25)
        now = time.monotonic()
        series.minutes.append(round((now - start) / 60.0, 3))
        series.add_rss(dict(iter_rss_mb(system)))
        try:
            series.broker_cpu.append(round(broker.cpu_percent(None), 1))
        except psutil.Error:
            series.broker_cpu.append(None)
        series.freshness_p99_ms.append(percentile_ms(freshness_s(engagements, tail, last, now), 99))
        recent = [s for s in list(queries.samples) if last <= s.at < now]
        series.query_p99_ms.append(percentile_ms([s.latency_s for s in recent], 99))
        series.availability.append(
            round(sum(s.ok for s in recent) / len(recent), 5) if recent else None
        )
        progress(
            f"minute {series.minutes[-1]:.1f}: broker cpu {series.broker_cpu[-1]}%, freshness "
            f"p99 {series.freshness_p99_ms[-1]} ms, query p99 {series.query_p99_ms[-1]} ms, rss "
            + ", ".join(f"{k} {v[-1]:.0f}" for k, v in sorted(series.rss_mb.items()) if v[-1])
        )
        last = now
        next_at += every_s
    return series


def summarize(series: Series, minutes: float) -> dict[str, Any]:
    xs = series.minutes
    start, end = minutes / 3.0, minutes
    per_process: dict[str, Any] = {}
    for name, ys in sorted(series.rss_mb.items()):
        line = fit(xs, ys)
        values = [y for y in ys if y is not None]
        per_process[name] = {
            "rss_mb_first": values[0] if values else None,
            "rss_mb_last": values[-1] if values else None,
            "slope_mb_per_min": round(line[0], 3) if line else None,
            "growth": growth(xs, ys, start, end),
        }
    ours = {
        n: p["growth"] for n, p in per_process.items() if n != "broker" and p["growth"] is not None
    }
    worst = max(ours, key=lambda n: ours[n]) if ours else None

    def slope(ys: list[float | None]) -> float | None:
        line = fit(xs, ys)
        return round(line[0], 3) if line else None

    def first(ys: list[float | None]) -> float | None:
        return next((y for y in ys if y is not None), None)

    def last(ys: list[float | None]) -> float | None:
        return next((y for y in reversed(ys) if y is not None), None)

    return {
        "soak_rss_growth_max": ours[worst] if worst else None,
        "soak_rss_growth_process": worst,
        "soak_broker_rss_growth": per_process.get("broker", {}).get("growth"),
        "growth_window_min": [round(start, 2), round(end, 2)],
        "processes": per_process,
        "broker_cpu_pct_first": first(series.broker_cpu),
        "broker_cpu_pct_last": last(series.broker_cpu),
        "broker_cpu_slope_pct_per_min": slope(series.broker_cpu),
        "freshness_p99_ms_first": first(series.freshness_p99_ms),
        "freshness_p99_ms_last": last(series.freshness_p99_ms),
        "freshness_p99_slope_ms_per_min": slope(series.freshness_p99_ms),
        "query_p99_ms_first": first(series.query_p99_ms),
        "query_p99_ms_last": last(series.query_p99_ms),
        "query_p99_slope_ms_per_min": slope(series.query_p99_ms),
        "availability_min": min((a for a in series.availability if a is not None), default=None),
    }


def plot(series: Series, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
    for name, ys in sorted(series.rss_mb.items()):
        if name == "broker":
            continue  # its own panel: it holds the whole log in memory
        values = [np.nan if y is None else y for y in ys]
        first = next((y for y in ys if y), None)
        axes[0][0].plot(series.minutes, values, label=name)
        if first:
            axes[0][1].plot(series.minutes, [v / first for v in values], label=name)
    axes[0][0].set_ylabel("RSS of recstream's processes (MB)")
    axes[0][0].set_ylim(bottom=0)
    axes[0][1].set_ylabel("RSS / its first sample")
    axes[0][1].legend(fontsize=7, ncol=2, loc="upper left")
    broker_rss = series.rss_mb.get("broker", [])
    ax = axes[0][2]
    ax.plot(series.minutes, [np.nan if y is None else y for y in series.broker_cpu], marker=".")
    ax.set_ylabel("broker CPU (% of a core)")
    ax.set_ylim(bottom=0)
    if broker_rss:
        twin = ax.twinx()
        twin.plot(
            series.minutes, [np.nan if y is None else y for y in broker_rss], color="tab:gray"
        )
        twin.set_ylabel("broker RSS (MB, grey: the log in memory)")
        twin.set_ylim(bottom=0)
    for ax, ys, label in (
        (axes[1][0], series.freshness_p99_ms, "freshness p99 (ms)"),
        (axes[1][1], series.query_p99_ms, "query p99 (ms)"),
        (axes[1][2], series.availability, "availability (share 2xx)"),
    ):
        ax.plot(series.minutes, [np.nan if y is None else y for y in ys], marker=".")
        ax.set_ylabel(label)
        if ys is not series.availability:
            ax.set_ylim(bottom=0)
    for ax in axes[1]:
        ax.set_xlabel("minutes under load")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_table(result: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v}"

    w0, w1 = result["growth_window_min"]
    rows = [
        f"| process | RSS first / last (MB) | slope (MB/min) | growth, minute {w0:g} to {w1:g} |",
        "|---|---|---|---|",
    ]
    for name, p in result["processes"].items():
        g = p["growth"]
        rows.append(
            f"| `{name}` | {fmt(p['rss_mb_first'])} / {fmt(p['rss_mb_last'])} | "
            f"{fmt(p['slope_mb_per_min'])} | {'n/a' if g is None else f'{g:+.1%}'} |"
        )
    rows += [
        "",
        "| measure | first sample | last sample | slope per minute |",
        "|---|---|---|---|",
        f"| broker CPU (% of a core) | {fmt(result['broker_cpu_pct_first'])} | "
        f"{fmt(result['broker_cpu_pct_last'])} | {fmt(result['broker_cpu_slope_pct_per_min'])} |",
        f"| freshness p99 (ms) | {fmt(result['freshness_p99_ms_first'])} | "
        f"{fmt(result['freshness_p99_ms_last'])} | "
        f"{fmt(result['freshness_p99_slope_ms_per_min'])} |",
        f"| query p99 (ms) | {fmt(result['query_p99_ms_first'])} | "
        f"{fmt(result['query_p99_ms_last'])} | {fmt(result['query_p99_slope_ms_per_min'])} |",
        "",
        f"{result['minutes']:g} minutes at {result['rates']['engagements_per_s']:g} engagements/s, "
        f"{result['rates']['queries_per_s']:g} queries/s and "
        f"{result['rates']['items_per_s']:g} new items/s; samples every "
        f"{result['sample_s']:g} s. Largest RSS growth of a recstream process "
        f"(`soak_rss_growth_max`): **{fmt(result['soak_rss_growth_max'])}** "
        f"(`{result['soak_rss_growth_process']}`); the broker's: "
        f"{fmt(result['soak_broker_rss_growth'])}. Lowest availability in a sample: "
        f"{fmt(result['availability_min'])}. Plot: [soak.png](soak.png).",
    ]
    text = DOC.read_text()
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    DOC.write_text(f"{head}{TABLE_BEGIN}\n" + "\n".join(rows) + f"\n{TABLE_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long under load")
    parser.add_argument("--quick", action="store_true", help="2 minutes, samples every 10 s")
    parser.add_argument("--sample-s", type=float, help="seconds between samples (30)")
    parser.add_argument("--event-rate", type=float, default=50.0, help="engagements a second")
    parser.add_argument(
        "--users",
        type=int,
        default=50,
        help="users engaging (their states reach the engine's 500 actions in 25,000 events)",
    )
    parser.add_argument("--item-rate", type=float, default=0.2, help="new items a second")
    parser.add_argument("--query-rate", type=float, default=30.0, help="requests a second")
    parser.add_argument("--model-dir", type=Path, help="the encoder's export (RECSTREAM_MODEL_DIR)")
    parser.add_argument("--workdir", type=Path, help="where the roles keep data and logs")
    parser.add_argument("--keep", action="store_true", help="keep the workdir after the run")
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw docs/soak.png and write the table into docs/reliability.md "
        "(default: runs of 30 minutes or more)",
    )
    args = parser.parse_args()
    minutes = 2.0 if args.quick else args.minutes
    sample_s = args.sample_s or (10.0 if args.quick else 30.0)
    item_rate = args.item_rate
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recstream-soak-"))
    system = System(workdir, model_dir=args.model_dir, say=progress)
    load = SteadyLoad(
        system,
        users=args.users,
        catalog=1000,
        new_items=int(minutes * 60 * item_rate) + 60,
        event_rate=args.event_rate,
        item_rate=item_rate,
        query_rate=args.query_rate,
        tailed=OUTPUTS,  # one consumer fewer on the inputs: the broker's fetch cost grows
    )
    ok = False
    try:
        progress(f"starting the system under {workdir}")
        system.start()
        load.start()
        progress(f"soaking for {minutes:g} minutes, a sample every {sample_s:g} s")
        series = sample_loop(system, load, minutes, sample_s)
        assert load.engagements is not None and load.queries is not None
        load.stop()
        samples = load.queries.samples
        result: dict[str, Any] = {
            "bench": "soak",
            "quick": args.quick,
            "minutes": minutes,
            "sample_s": sample_s,
            **summarize(series, minutes),
            "events_sent": len(load.engagements.sent),
            "requests": len(samples),
            "availability": round(sum(s.ok for s in samples) / len(samples), 5)
            if samples
            else None,
            "unexpected_exits": series.exits,
            "rates": {
                "engagements_per_s": args.event_rate,
                "items_per_s": item_rate,
                "queries_per_s": args.query_rate,
                "users": load.users,
            },
        }
        write_docs = args.write_docs if args.write_docs is not None else minutes >= 30
        plot_path = PLOT if write_docs else RESULTS / "soak.png"
        plot(series, plot_path, f"recstream soak: {minutes:g} min on the embedded broker")
        result["plot"] = str(plot_path.relative_to(REPO))
        # The samples themselves, beside the plot (too long for the JSON line).
        RESULTS.mkdir(parents=True, exist_ok=True)
        series_path = RESULTS / "soak-series.json"
        series_path.write_text(json.dumps(series.__dict__))
        result["series"] = str(series_path.relative_to(REPO))
        if write_docs:
            write_table(result)
        ok = True
    finally:
        load.close()
        system.close()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"logs and data kept under {workdir}")
    emit(result)


if __name__ == "__main__":
    main()
