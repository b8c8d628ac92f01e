"""Faults injected under load: what the whole system loses, double-counts and answers meanwhile.

The system runs as it is deployed, each role a process with its own data directory and port
(``bench/_system.py``): the embedded broker, the encoder worker, two interests workers and two
serving replicas. A steady load runs throughout (``bench/_load.py``): engagements, new items
through the encoder, and recommendation requests to the replicas behind a client that, like a
load balancer, leaves out a replica that is not ready and tries a failed request once more on
the other. Then, one at a time, each fault, with recovery between them:

- ``kill-interests-1`` / ``kill-interests-2``: SIGKILL of an interests worker, restarted 2 s later;
- ``kill-encoder``: SIGKILL of the encoder worker, restarted;
- ``kill-serving-1``: SIGKILL of a replica, restarted from its snapshot, the other answering;
- ``corrupt-serving-2``: SIGKILL of the other replica, every snapshot file of it truncated
  to half, restarted: it must notice and rebuild, not serve garbage or crash;
- ``poison``: N malformed messages on each input topic from a foreign client (confluent-kafka),
  mixed into the valid load; each must get exactly one dead letter, with its reason;
- ``freeze-broker``: the broker stopped (SIGSTOP) for 30 s, then resumed: every role must ride
  it out without a restart;
- ``kill-interests-2-for-good``: SIGKILL of an interests worker left down: the survivor takes
  its partitions.

Measured for each fault:
- **recovery**: seconds from the fault's end (the restart, the resume, the burst confirmed)
  until every role has got to the log's ends as they were then: the interests workers' and the
  encoder's committed offsets, each replica's position gauge;
- **availability**: the share of requests answered 2xx, overall (what the client got) and per
  replica (its own attempts; a replica's own kill, until it is ready again, left out of its own
  figure, not of the overall one), from the fault's start until recovery;
- **latency**: the client's p99 during the fault (start to recovery) and after it (recovery to
  the next fault);
- **lost / double-applied events**: once the load has stopped and every role caught up, the
  log is replayed offline through the engine (``bench/_verify.py``) and each user's published
  state compared with the replay's, action by action; a discrepancy is charged to the fault
  during whose period (its start to the next fault's start) the event was sent.
The baseline, measured in the same run: availability and p99 of the load before the first fault.

Prints one JSON line; the full run writes its table into docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, progress
from bench._load import QuerySample, SteadyLoad, freshness_s, percentile_ms
from bench._poison import PoisonBurst, check_dead_letters
from bench._system import Offsets, Role, System, group_roles, kill_leftovers, ready
from bench._verify import check_replicas, verify

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
TABLE_BEGIN, TABLE_END = "<!-- chaos table: begin -->", "<!-- chaos table: end -->"

ALL_FAULTS = (
    "kill-interests-1",
    "kill-interests-2",
    "kill-encoder",
    "kill-serving-1",
    "corrupt-serving-2",
    "poison",
    "freeze-broker",
    "kill-interests-2-for-good",
)
# A role keeps up when it has got to where the log was this long ago (the interests workers
# commit every second).
KEEPING_UP_S = 2.0
QUICK_FAULTS = ("poison", "kill-interests-1", "corrupt-serving-2", "freeze-broker")


@dataclass(frozen=True)
class Plan:
    users: int
    catalog: int  # items published before the load starts
    new_items: int  # items trickling in during the run
    item_rate: float
    event_rate: float
    query_rate: float
    poison: int  # malformed messages per input topic
    poison_s: float
    freeze_s: float
    warmup_s: float  # the baseline: load without faults
    settle_s: float  # after each fault's recovery, before the next
    recovery_timeout_s: float
    snapshot_every_s: float
    faults: tuple[str, ...]


FULL = Plan(
    users=1000,
    catalog=400,
    new_items=1000,
    item_rate=1.0,
    event_rate=100.0,
    query_rate=30.0,
    poison=10_000,
    poison_s=15.0,
    freeze_s=30.0,
    warmup_s=30.0,
    settle_s=15.0,
    recovery_timeout_s=120.0,
    snapshot_every_s=10.0,
    faults=ALL_FAULTS,
)
QUICK = Plan(
    users=200,
    catalog=150,
    new_items=300,
    item_rate=1.0,
    event_rate=50.0,
    query_rate=20.0,
    poison=500,
    poison_s=3.0,
    freeze_s=8.0,
    warmup_s=8.0,
    settle_s=4.0,
    recovery_timeout_s=90.0,
    snapshot_every_s=5.0,
    faults=QUICK_FAULTS,
)


@dataclass
class Fault:
    name: str
    what: str
    started: float = 0.0
    ended: float = 0.0  # when the fault was over: restart, resume, burst confirmed
    recovered: float | None = None
    next_started: float | None = None
    role_recovery_s: dict[str, float | None] = field(default_factory=dict)
    down: dict[str, tuple[float, float]] = field(default_factory=dict)  # replica -> own window
    notes: dict[str, Any] = field(default_factory=dict)


class Run:
    def __init__(self, plan: Plan, workdir: Path, model_dir: Path | None) -> None:
        self.plan = plan
        self.system = System(
            workdir,
            snapshot_every_s=plan.snapshot_every_s,
            model_dir=model_dir,
            say=progress,
        )
        self.load = SteadyLoad(
            self.system,
            users=plan.users,
            catalog=plan.catalog,
            new_items=plan.new_items,
            event_rate=plan.event_rate,
            item_rate=plan.item_rate,
            query_rate=plan.query_rate,
        )
        self.offsets: Offsets | None = None
        self.faults: list[Fault] = []
        self.unexpected_exits: list[dict[str, Any]] = []
        self.poison_sent: dict[bytes, tuple[str, str]] = {}

    def start(self) -> None:
        progress(f"starting the system under {self.system.workdir}")
        self.system.start()
        self.offsets = Offsets(self.system.settings)
        self.load.start()

    def supervise(self) -> None:
        self.unexpected_exits += self.system.restart_crashed(self.load.started)

    # -- faults ------------------------------------------------------------------------------
    def inject(self, name: str) -> Fault:
        roles = self.system.roles
        fault = Fault(name, "")
        fault.started = time.monotonic()
        if name in ("kill-interests-1", "kill-interests-2", "kill-encoder"):
            role = roles[name.removeprefix("kill-")]
            fault.what = f"SIGKILL {role.name}, restarted 2 s later"
            self._kill_restart(role, fault)
        elif name == "kill-interests-2-for-good":
            role = roles["interests-2"]
            fault.what = "SIGKILL interests-2, left down: interests-1 takes its partitions"
            children = role.kill()
            fault.notes["orphans"] = kill_leftovers(children, 5.0)
            fault.ended = time.monotonic()
        elif name == "kill-serving-1":
            role = roles["serving-1"]
            fault.what = "SIGKILL serving-1, restarted 2 s later from its snapshot"
            self._kill_restart(role, fault)
        elif name == "corrupt-serving-2":
            role = roles["serving-2"]
            fault.what = "SIGKILL serving-2, its snapshot files truncated, restarted"
            self._kill_restart(role, fault, corrupt=True)
        elif name == "freeze-broker":
            fault.what = f"broker frozen (SIGSTOP) for {self.plan.freeze_s:g} s, then SIGCONT"
            self.system.freeze_broker()
            time.sleep(self.plan.freeze_s)
            self.system.thaw_broker()
            fault.ended = time.monotonic()
        elif name == "poison":
            burst = PoisonBurst(
                self.system.broker.bootstrap_servers, self.plan.poison, self.plan.poison_s
            )
            fault.what = (
                f"{self.plan.poison:,} malformed messages on each of engagements and items "
                "from confluent-kafka, mixed into the load"
            )
            fault.ended = burst.send()
            self.poison_sent.update(burst.sent)
            fault.notes["malformed_sent"] = len(burst.sent)
            fault.notes["handed_over_s"] = round(burst.handed_over_s, 1)
            fault.notes["confirmed_s"] = round(burst.confirmed_s, 1)
        else:
            raise ValueError(f"unknown fault {name!r}")
        return fault

    def _kill_restart(self, role: Role, fault: Fault, corrupt: bool = False) -> None:
        children = role.kill()
        killed_at = time.monotonic()
        time.sleep(2.0)
        fault.notes["orphans"] = kill_leftovers(children, 3.0)
        if corrupt:
            fault.notes["truncated_files"] = truncate_snapshots(role)
        role.start()
        fault.ended = time.monotonic()
        if role.kind == "serving":
            fault.down[role.name] = (killed_at - 1.0, killed_at)  # end set once ready

    def recover(self, fault: Fault) -> None:
        """Wait until every role has caught up at once; note when each first did, and when
        all did (``fault.recovered``).

        A role has caught up when it has got to the log's ends as of the fault's end (what
        piled up meanwhile) and as of ``KEEPING_UP_S`` ago (it keeps up with what arrives)."""
        engagements, tail = self.load.engagements, self.load.tail
        assert engagements is not None and self.offsets is not None
        system, plan = self.system, self.plan
        engagements.confirmed_after(fault.ended)
        piled_up = tail.ends(after=max(fault.ended, engagements.confirmed_at))
        groups = {
            name: roles
            for name, roles in group_roles(system).items()
            if any(not r.down_on_purpose or r.alive for r in roles)
        }
        deadline = fault.ended + plan.recovery_timeout_s
        while time.monotonic() < deadline:
            self.supervise()
            now = time.monotonic()
            recent = tail.ends_before(now - KEEPING_UP_S)
            target = {tp: max(end, recent.get(tp, 0)) for tp, end in piled_up.items()}
            caught_up = 0
            for name, roles in groups.items():
                live = [r for r in roles if r.alive]
                if not live or (roles[0].kind == "serving" and not ready(live[0])):
                    continue
                if self.offsets.behind(live[0], target) == 0:
                    caught_up += 1
                    fault.role_recovery_s.setdefault(name, round(now - fault.ended, 1))
            if caught_up == len(groups):
                fault.recovered = now
                break
            time.sleep(0.25)
        for name in groups:
            fault.role_recovery_s.setdefault(name, None)
        for replica, (start, _) in list(fault.down.items()):
            took = fault.role_recovery_s.get(replica)
            fault.down[replica] = (
                start,
                fault.ended + took if took is not None else time.monotonic(),
            )
        if fault.name.startswith(("kill-serving", "corrupt-serving")):
            role = system.roles[fault.name.split("-", 1)[1]]
            fault.notes["log"] = serving_restart_log(role)

    def settle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.supervise()
            time.sleep(0.25)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> None:
        plan = self.plan
        progress(f"baseline: {plan.warmup_s:g} s of load without faults")
        self.settle(plan.warmup_s)
        for name in plan.faults:
            progress(f"fault: {name}")
            exits = len(self.unexpected_exits)
            fault = self.inject(name)
            if self.faults:
                self.faults[-1].next_started = fault.started
            self.faults.append(fault)
            self.recover(fault)
            fault.notes["exited_by_themselves"] = [e["role"] for e in self.unexpected_exits[exits:]]
            if fault.recovered is not None:
                took = fault.recovered - fault.ended
                progress(f"  recovered in {took:.1f} s: {fault.role_recovery_s}")
            else:
                progress(f"  NOT recovered: {fault.role_recovery_s}")
            self.settle(plan.settle_s)

    def stop_load(self) -> float:
        stopped = time.monotonic()
        if self.faults:
            self.faults[-1].next_started = stopped
        self.load.stop()
        return stopped


def truncate_snapshots(role: Role) -> list[str]:
    """Every payload file of every snapshot generation of a replica cut to half its size."""
    assert role.data_dir is not None
    cut = []
    for root in ("index", "popularity"):
        for path in sorted((role.data_dir / root).glob("snap-*/*")):
            if path.name == "manifest.json" or not path.is_file():
                continue
            size = path.stat().st_size
            with open(path, "r+b") as f:
                f.truncate(size // 2)
            cut.append(str(path.relative_to(role.data_dir)))
    return cut


def serving_restart_log(role: Role) -> dict[str, Any]:
    """What a restarted replica said about its snapshots (its log since the restart)."""
    text = role.log_path.read_text(errors="replace")
    since = text.rsplit("=== start ", 1)[-1]
    return {
        # The index came from a snapshot (else it was rebuilt from the replica's item store).
        "index_snapshot_used": "no usable item-index snapshot" not in since,
        # Snapshot generations found broken (checksum, size) and skipped.
        "broken_snapshots_ignored": since.count("ignoring snapshot"),
        "tracebacks": since.count("Traceback"),
    }


# -- measurements ----------------------------------------------------------------------------


def window(samples: list[QuerySample], start: float, end: float) -> list[QuerySample]:
    return [s for s in samples if start <= s.at < end]


def availability(
    samples: list[QuerySample], replica: str | None, exclude: Sequence[tuple[float, float]] = ()
) -> tuple[float | None, int]:
    """(share answered 2xx, requests): of the client's requests (``replica`` None), or of
    one replica's own attempts outside the ``exclude`` windows."""
    if replica is None:
        n = len(samples)
        return (round(sum(s.ok for s in samples) / n, 5) if n else None), n
    attempts = [
        ok
        for s in samples
        for name, at, ok in s.attempts
        if name == replica and not any(a <= at <= b for a, b in exclude)
    ]
    n = len(attempts)
    return (round(sum(attempts) / n, 5) if n else None), n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer faults, shorter, small N")
    parser.add_argument("--faults", help="comma-separated subset of: " + ", ".join(ALL_FAULTS))
    parser.add_argument("--poison", type=int, help="malformed messages per input topic")
    parser.add_argument("--model-dir", type=Path, help="the encoder's export (RECSTREAM_MODEL_DIR)")
    parser.add_argument("--workdir", type=Path, help="where the roles keep data and logs")
    parser.add_argument("--keep", action="store_true", help="keep the workdir after a good run")
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the table into docs/reliability.md (default: full runs only)",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.faults:
        chosen = tuple(f.strip() for f in args.faults.split(",") if f.strip())
        unknown = set(chosen) - set(ALL_FAULTS)
        if unknown:
            parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
        plan = _replace(plan, faults=chosen)
    if args.poison is not None:
        plan = _replace(plan, poison=args.poison)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recstream-chaos-"))
    t0 = time.monotonic()
    run = Run(plan, workdir, args.model_dir)
    ok = False
    try:
        run.start()
        run.run()
        stopped = run.stop_load()
        progress("load stopped; waiting for every role to catch up")
        final = Fault("final", "the load stopped")
        final.started = final.ended = stopped
        run.recover(final)
        result = report(run, final, time.monotonic() - t0, args.quick)
        ok = True
    finally:
        run.load.close()
        if run.offsets is not None:
            run.offsets.close()
        run.system.close()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"logs and data kept under {workdir}")
    write_docs = args.write_docs if args.write_docs is not None else not args.quick
    if write_docs:
        write_table(result)
    emit(result)


def _replace(plan: Plan, **changes: Any) -> Plan:
    from dataclasses import replace

    return replace(plan, **changes)


def report(run: Run, final: Fault, elapsed_s: float, quick: bool) -> dict[str, Any]:
    engagements, queries, tail = run.load.engagements, run.load.queries, run.load.tail
    assert engagements is not None and queries is not None
    progress("verifying: offline replay of the accepted events; dead letters; replicas")
    verdict, expected = verify(run.system.settings, tail.latest_interests)
    replicas = {r.name: r.url for r in run.system.of_kind("serving") if r.alive}
    check_replicas(replicas, expected, verdict)
    letters = check_dead_letters(run.system.settings, run.poison_sent)

    samples = queries.samples
    sent = engagements.sent
    by_user_ts = {(ev.user_id, ev.ts): ev.sent for ev in sent.values()}
    faults = run.faults
    periods = [(f.name, f.started, f.next_started or float("inf")) for f in faults]

    def charged(discrepancies: list[Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in discrepancies:
            at = by_user_ts.get((d.user_id, d.ts))
            name = "baseline"
            for fname, start, end in periods:
                if at is not None and start <= at < end:
                    name = fname
            out[name] = out.get(name, 0) + 1
        return out

    lost_by, double_by = charged(verdict.lost), charged(verdict.double)
    replica_names = sorted(r.name for r in run.system.of_kind("serving"))
    own_down: dict[str, list[tuple[float, float]]] = {n: [] for n in replica_names}
    for f in faults:
        for replica, win in f.down.items():
            own_down[replica].append(win)

    detail: dict[str, Any] = {}
    during: list[float] = []
    recoveries: list[float | None] = []
    for f in faults:
        end = f.recovered or (f.ended + run.plan.recovery_timeout_s)
        in_fault = window(samples, f.started, end)
        after = window(samples, end, f.next_started or end)
        during += [s.latency_s for s in in_fault]
        recovery = round(f.recovered - f.ended, 1) if f.recovered is not None else None
        recoveries.append(recovery)
        avail: dict[str, Any] = {"overall": availability(in_fault, None)[0]}
        for r in replica_names:
            avail[r] = availability(in_fault, r, own_down[r])[0]
        detail[f.name] = {
            "what": f.what,
            "fault_s": round(f.ended - f.started, 1),
            "recovery_s": recovery,
            "role_recovery_s": f.role_recovery_s,
            "availability": avail,
            "requests": len(in_fault),
            # Requests that got no 2xx from their first replica and were tried on the other.
            "retried": sum(len(s.attempts) > 1 for s in in_fault),
            "p99_ms_during": percentile_ms([s.latency_s for s in in_fault], 99),
            "p99_ms_after": percentile_ms([s.latency_s for s in after], 99),
            "freshness_p99_ms": percentile_ms(freshness_s(engagements, tail, f.started, end), 99),
            "events_lost": lost_by.get(f.name, 0),
            "events_double_applied": double_by.get(f.name, 0),
            **f.notes,
        }
    first = faults[0].started if faults else final.started
    base = window(samples, run.load.started, first)
    overall, n_requests = availability(samples, None)
    per_replica = {r: availability(samples, r, own_down[r])[0] for r in replica_names}
    done = [r for r in recoveries if r is not None]
    max_recovery = max(done, default=0.0) if len(done) == len(recoveries) else None
    return {
        "bench": "chaos",
        "quick": quick,
        "faults": len(faults),
        "events_sent": len(sent),
        "events_lost": verdict.events_lost,
        "events_double_applied": verdict.events_double_applied,
        "dead_letters_expected": letters.expected,
        "dead_letters_found": letters.found,
        "availability": overall,
        "max_recovery_s": max_recovery,
        "p99_ms_during_faults": percentile_ms(during, 99),
        "baseline_availability": availability(base, None)[0],
        "baseline_p99_ms": percentile_ms([s.latency_s for s in base], 99),
        "baseline_freshness_p99_ms": percentile_ms(
            freshness_s(engagements, tail, run.load.started, first), 99
        ),
        "availability_per_replica": per_replica,
        "requests": n_requests,
        "final_catch_up_s": final.role_recovery_s,
        "unexpected_exits": run.unexpected_exits,
        "send_failures": len(engagements.failures),
        "verification": verdict.summary(),
        "dead_letters": letters.as_dict(),
        "per_fault": detail,
        "duration_s": round(elapsed_s, 1),
        "rates": {
            "engagements_per_s": run.plan.event_rate,
            "items_per_s": run.plan.item_rate,
            "queries_per_s": run.plan.query_rate,
            "users": run.plan.users,
        },
    }


def write_table(result: dict[str, Any]) -> None:
    """The per-fault table between the markers in docs/reliability.md."""

    def fmt(v: Any, suffix: str = "") -> str:
        return "n/a" if v is None else f"{v}{suffix}"

    rows = [
        "| fault | lasted (s) | recovery (s) | availability: overall / serving-1 / serving-2 "
        "| retried | p99 during / after (ms) | freshness p99 (ms) | lost | double |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in result["per_fault"].items():
        a = d["availability"]
        rows.append(
            f"| `{name}` | {fmt(d['fault_s'])} | {fmt(d['recovery_s'])} | "
            f"{fmt(a['overall'])} / {fmt(a.get('serving-1'))} / {fmt(a.get('serving-2'))} | "
            f"{d.get('retried', 'n/a')} | "
            f"{fmt(d['p99_ms_during'])} / {fmt(d['p99_ms_after'])} | "
            f"{fmt(d['freshness_p99_ms'])} | "
            f"{d['events_lost']} | {d['events_double_applied']} |"
        )
    letters = result["dead_letters"]
    exits = ", ".join(f"{e['role']} at {e['at_s']} s" for e in result["unexpected_exits"])
    rows += [
        "",
        f"Whole run: {result['duration_s']:.0f} s, {result['events_sent']:,} engagements sent, "
        f"{result['requests']:,} requests; **{result['events_lost']} lost, "
        f"{result['events_double_applied']} double-applied**; dead letters for "
        f"{result['dead_letters_found']:,} of {result['dead_letters_expected']:,} malformed "
        f"messages ({letters['duplicated']} sent twice); availability "
        f"{fmt(result['availability'])} (before the faults: "
        f"{fmt(result['baseline_availability'])}); p99 during faults "
        f"{fmt(result['p99_ms_during_faults'])} ms (before: {fmt(result['baseline_p99_ms'])} "
        f"ms); slowest recovery {fmt(result['max_recovery_s'])} s; roles that exited by "
        f"themselves: {exits or 'none'}.",
        "",
        "```json",
        json.dumps(
            {
                k: (v if k != "unexpected_exits" else [e["role"] for e in v])
                for k, v in result.items()
                if k not in ("per_fault", "verification", "dead_letters")
            }
        ),
        "```",
    ]
    text = DOC.read_text()
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    DOC.write_text(f"{head}{TABLE_BEGIN}\n" + "\n".join(rows) + f"\n{TABLE_END}{tail}")


if __name__ == "__main__":
    main()
