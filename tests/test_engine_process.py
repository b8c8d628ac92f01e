"""The engine in a process of its own: same answers as the engine in process, the worker's
mirror of which users it holds, errors that reach the worker."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from streams.interests import InterestClusters, InterestConfig
from streams.schemas import decode_for_topic
from streams.topics import USER_INTERESTS
from streams.workers.interests.engine_process import (
    FORGET,
    Batch,
    EngineHost,
    EngineProcess,
    EngineProcessError,
    HeldUsers,
    Learn,
    Publishing,
    UserJob,
    interests_record,
)

T0 = 1_700_000_000_000
DIM = 16


def item_vectors(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"i{k}" for k in range(n)], rng.normal(size=(n, DIM)).astype(np.float32)


def learn(k: int, item: int, user: str = "u", ts: int = 0) -> Learn:
    return Learn(f"{user}-e{k}", f"i{item}", "click", None, T0 + ts + k * 1000, item)


def test_a_batch_gives_the_states_and_records_of_the_engine_run_directly() -> None:
    ids, vectors = item_vectors(40)
    config = InterestConfig(recluster_every=8)
    host = EngineHost(config, Publishing(), cache_users=100)
    direct: dict[str, InterestClusters] = {}
    rng = random.Random(1)
    for round_ in range(6):
        jobs = []
        for u in range(5):
            user = f"u{u}"
            ops: list[Learn | None] = [
                learn(round_ * 10 + k, rng.randrange(40), user) for k in range(rng.randint(1, 4))
            ]
            if round_ == 0:
                ops.append(ops[0])  # a duplicate: not learned twice
            jobs.append(UserJob(user, None, user not in direct, ops, False))
            state = direct.setdefault(user, InterestClusters(config))
            for op in ops:
                assert op is not None
                state.learn_one(op, vectors[op.row])
        results = host.apply(Batch(jobs, ids, vectors, [], []))
        for job, result in zip(jobs, results, strict=True):
            state = direct[job.user_id]
            blob = state.to_bytes()
            assert result.changed and not result.empty
            assert result.blob == blob
            record = interests_record(job.user_id, state, blob, Publishing())
            # Same record but for the time it was made.
            assert result.record is not None
            assert result.record.split(b'"updated_ms"')[0] == record.split(b'"updated_ms"')[0]
            if round_ == 0:
                assert result.learned[-1] is False and all(result.learned[:-1])


def test_the_record_carries_every_kept_action_and_its_published_interest() -> None:
    """What serving reads instead of the engine's bytes: the record's actions are the state's
    kept actions in arrival order, each pointing at its cluster's place in ``interests`` (-1
    for a cluster beyond the published ones); no state bytes by default."""
    ids, vectors = item_vectors(60, seed=3)
    config = InterestConfig(merge_threshold=0.2, max_actions=40)  # many clusters, evictions
    publishing = Publishing(interests=3)
    ops: list[Learn | None] = [learn(k, (k * 7) % 60, ts=-(k % 5) * 500) for k in range(70)]
    ops += [learn(70, 0), learn(71, 35)]  # items kept already (actions 60 and 65), again
    host = EngineHost(config, publishing, cache_users=10)
    [result] = host.apply(Batch([UserJob("u", None, True, ops, False)], ids, vectors, [], []))
    assert result.record is not None
    record = decode_for_topic(USER_INTERESTS.name, result.record)
    state = host.states["u"]
    assert record.state is None and record.actions is not None
    items, clusters = state.assignments()
    assert state.n_clusters > 3 and len(items) == 40 == record.n_actions
    assert record.actions.items == items
    assert record.actions.ts == state.action_times().tolist()
    assert set(record.actions.items) == state.seen_items
    # Cluster j is at position rank[j] in importance order; only the top 3 are published.
    importances = state.importances(state.last_ts)
    rank = np.argsort(np.argsort(-importances, kind="stable"), kind="stable")
    assert record.actions.interest == [int(r) if r < 3 else -1 for r in rank[clusters]]
    assert [i.medoid for i in record.interests] == [
        i.medoid for i in state.top_medoids(3, state.last_ts)
    ]
    for item, interest in zip(record.actions.items, record.actions.interest, strict=True):
        if item in {i.medoid for i in record.interests}:
            assert record.interests[interest].medoid == item


def test_a_stored_state_is_restored_and_forget_empties_the_user() -> None:
    ids, vectors = item_vectors(10)
    host = EngineHost(InterestConfig(), Publishing(state="full"), cache_users=10)
    [first] = host.apply(
        Batch([UserJob("u", None, True, [learn(1, 3)], False)], ids, vectors, [], [])
    )
    expected = InterestClusters(InterestConfig())
    expected.learn_one(learn(1, 3), vectors[3])
    assert first.blob == expected.to_bytes()
    other = EngineHost(InterestConfig(), Publishing(state="full"), cache_users=10)
    job = UserJob("u", first.blob, False, [learn(2, 4)], False)
    [restored] = other.apply(Batch([job], ids, vectors, [], []))
    [same] = host.apply(
        Batch([UserJob("u", None, False, [learn(2, 4)], False)], ids, vectors, [], [])
    )
    assert restored.blob == same.blob
    [gone] = host.apply(Batch([UserJob("u", None, False, [FORGET], False)], ids, vectors, [], []))
    assert gone.empty and gone.changed and gone.blob is None
    assert "u" not in host.states


def test_nothing_changed_comes_back_without_bytes_unless_asked() -> None:
    ids, vectors = item_vectors(10)
    host = EngineHost(InterestConfig(), Publishing(), cache_users=10)
    [learned] = host.apply(
        Batch([UserJob("u", None, True, [learn(1, 3)], False)], ids, vectors, [], [])
    )
    again = UserJob("u", None, False, [learn(1, 3)], False)
    [quiet] = host.apply(Batch([again], ids, vectors, [], []))
    assert quiet.learned == [False] and not quiet.changed and quiet.blob is None
    [asked] = host.apply(Batch([again._replace(publish=True)], ids, vectors, [], []))
    state = InterestClusters(InterestConfig())
    state.learn_one(learn(1, 3), vectors[3])
    assert asked.blob == learned.blob == state.to_bytes() and not asked.changed
    assert asked.record is not None and learned.record is not None
    # The same record but for the time it was made.
    assert asked.record.split(b'"updated_ms"')[0] == learned.record.split(b'"updated_ms"')[0]


def test_deleted_items_leave_a_state_at_its_next_job() -> None:
    ids, vectors = item_vectors(10)
    host = EngineHost(InterestConfig(), Publishing(), cache_users=10)
    host.apply(
        Batch([UserJob("u", None, True, [learn(1, 3), learn(2, 5)], False)], ids, vectors, [], [])
    )
    [after] = host.apply(
        Batch([UserJob("u", None, False, [learn(3, 5)], False)], ids, vectors, ["i3"], [])
    )
    assert after.changed and host.states["u"].seen_items == {"i5"}
    assert host.states["u"].seen_among({"i3", "i5", "i9"}) == {"i5"}
    # Deleted, then back: no longer dropped.
    host.apply(Batch([UserJob("u", None, False, [learn(4, 3)], False)], ids, vectors, [], ["i3"]))
    assert host.states["u"].seen_items == {"i3", "i5"}


def test_the_workers_mirror_never_counts_on_a_user_the_engine_has_evicted() -> None:
    """The worker touches users as it plans jobs and drops emptied ones only when their results
    are written, after it planned the next chunk: its mirror may forget users the engine still
    holds (their state is then sent again), never the other way round."""
    ids, vectors = item_vectors(8)
    rng = random.Random(7)
    capacity = 5
    host = EngineHost(InterestConfig(), Publishing(state="none"), cache_users=capacity)
    held = HeldUsers(capacity)
    stored: dict[str, bytes] = {}
    pending_drops: list[str] = []
    previous: list[str] = []
    for step in range(2000):
        # A user is in one chunk of a batch: two chunks in flight have distinct users.
        users = rng.sample([f"u{k}" for k in range(12) if f"u{k}" not in previous], 4)
        users = users[: rng.randint(1, 4)]
        previous = users
        jobs = []
        for user in users:
            was_held, _ = held.touch(user)
            ops: list[Learn | None] = (
                [FORGET] if rng.random() < 0.15 else [learn(step, rng.randrange(8), user)]
            )
            if was_held:
                assert user in host.states
                jobs.append(UserJob(user, None, False, ops, False))
            else:
                jobs.append(UserJob(user, stored.get(user), user not in stored, ops, False))
        for user in pending_drops:  # the previous chunk's results, written after planning this one
            held.drop(user)
        pending_drops = []
        for result in host.apply(Batch(jobs, ids, vectors, [], [])):
            if result.empty:
                stored.pop(result.user_id, None)
                pending_drops.append(result.user_id)
            elif result.blob is not None:
                stored[result.user_id] = host.states[result.user_id].to_bytes()


def test_the_child_process_answers_like_the_host_and_reports_its_errors() -> None:
    ids, vectors = item_vectors(20)
    config = InterestConfig()
    jobs = [
        UserJob(f"u{u}", None, True, [learn(k, (u * 3 + k) % 20, f"u{u}") for k in range(5)], False)
        for u in range(4)
    ]
    expected = EngineHost(config, Publishing(), 10).apply(Batch(jobs, ids, vectors, [], []))

    async def run() -> None:
        engine = EngineProcess(config, Publishing(), 10)
        try:
            results = await engine.apply(Batch(jobs, ids, vectors, [], []))
            assert [(r.user_id, r.learned, r.blob) for r in results] == [
                (r.user_id, r.learned, r.blob) for r in expected
            ]
            await engine.clear()
            unknown = UserJob("u0", None, False, [learn(9, 1, "u0")], False)
            with pytest.raises(EngineProcessError, match="does not hold user 'u0'"):
                await engine.apply(Batch([unknown], ids, vectors, [], []))
        finally:
            engine.stop()
        assert not engine._process.is_alive()

    asyncio.run(run())


def test_the_child_process_ends_when_the_worker_is_gone() -> None:
    async def run() -> None:
        engine = EngineProcess(InterestConfig(), Publishing(), 10)
        engine._requests.close()  # what the kernel does to a SIGKILLed worker's end of the pipe
        engine._process.join(30)
        assert engine._process.exitcode == 0
        with pytest.raises(EngineProcessError, match="gone"):
            await engine.apply(Batch([], [], np.zeros((0, DIM), np.float32), [], []))
        engine.stop()

    asyncio.run(run())


def test_a_cut_batch_acks_in_each_partition_only_what_precedes_its_first_undone_event() -> None:
    from types import SimpleNamespace

    from streams.workers.interests.delivery import ackable

    def event(partition: int, offset: int) -> SimpleNamespace:
        return SimpleNamespace(
            message=SimpleNamespace(tp=("engagements", partition), offset=offset)
        )

    batch = [event(p, o) for o in range(10, 16) for p in (0, 1, 2)]
    # Users were applied in another order than offsets: some done events follow undone ones.
    undone = [
        e for e in batch if (e.message.tp[1], e.message.offset) in {(0, 12), (0, 14), (1, 10)}
    ]
    acked = {(e.message.tp[1], e.message.offset) for e in ackable(batch, undone)}
    assert acked == {(0, 10), (0, 11)} | {(2, o) for o in range(10, 16)}


def test_the_local_engine_answers_like_the_child_process() -> None:
    from streams.workers.interests.engine_process import LocalEngine

    ids, vectors = item_vectors(20)
    jobs = [
        UserJob(f"u{u}", None, True, [learn(k, (u + k) % 20, f"u{u}") for k in range(6)], False)
        for u in range(3)
    ]

    async def run() -> list[tuple[str, list[bool], bytes | None]]:
        out = []
        for engine in (
            LocalEngine(InterestConfig(), Publishing(), 10),
            EngineProcess(InterestConfig(), Publishing(), 10),
        ):
            try:
                results = await engine.apply(Batch(jobs, ids, vectors, [], []))
                out.append([(r.user_id, r.learned, r.blob) for r in results])
            finally:
                engine.stop()
        return out

    local, child = asyncio.run(run())
    assert local == child


def test_an_embedding_of_another_dimension_is_refused_alone_with_its_reason() -> None:
    ids, vectors = item_vectors(6)
    wide = np.ones((1, DIM + 4), dtype=np.float32)
    host = EngineHost(InterestConfig(), Publishing(), cache_users=10)
    host.apply(Batch([UserJob("u", None, True, [learn(1, 1)], False)], ids, vectors, [], []))
    before = host.states["u"].to_bytes()
    [refused] = host.apply(
        Batch([UserJob("u", None, False, [learn(2, 0)], False)], ["iw"], wide, [], [])
    )
    assert refused.learned == [False] and not refused.changed
    assert refused.rejected == [
        ("u-e2", f"embedding has dim {DIM + 4}, this user's state has dim {DIM}")
    ]
    assert host.states["u"].to_bytes() == before
    # The user's other events still apply.
    [after] = host.apply(
        Batch([UserJob("u", None, False, [learn(3, 2)], False)], ids, vectors, [], [])
    )
    assert after.learned == [True] and after.rejected == []


def test_the_local_engine_reports_its_errors_like_the_child_process() -> None:
    from streams.workers.interests.engine_process import LocalEngine

    ids, vectors = item_vectors(4)

    async def run() -> None:
        engine = LocalEngine(InterestConfig(), Publishing(), 10)
        await engine.apply(
            Batch([UserJob("u1", None, True, [learn(1, 1, "u1")], False)], ids, vectors, [], [])
        )
        unknown = UserJob("u0", None, False, [learn(9, 1, "u0")], False)
        with pytest.raises(EngineProcessError, match="does not hold user 'u0'"):
            await engine.apply(Batch([unknown], ids, vectors, [], []))
        assert engine._host.states == {}  # forgotten, as the child forgets on an error

    asyncio.run(run())


def test_the_worker_config_builds_what_records_publish_once_and_refuses_unknown_states() -> None:
    from streams.workers.interests.config import InterestsWorkerConfig

    config = InterestsWorkerConfig(published_interests=3, published_state="view")
    assert config.publishing == Publishing(interests=3, members=5, state="view")
    with pytest.raises(ValueError, match="published state must be view, full or none: 'all'"):
        InterestsWorkerConfig(published_state="all")
