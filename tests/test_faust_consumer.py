"""``streams.faust_runtime.consumer``: the drain that runs callbacks inline, and the seek that holds
the flow, alone and in a real faust app on the embedded broker."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from mode import Service

from streams.broker import EmbeddedBroker
from streams.faust_runtime.consumer import deliver
from streams.publish import Publisher

APP = Path(__file__).resolve().parent / "_quick_consumer_app.py"


async def put_like_faust(queue: asyncio.Queue[int], value: int) -> None:
    """What faust's conductor does with a message: into the stream's buffer at once, or (full)
    through a task that waits for room."""
    if queue.full():
        await asyncio.wait([asyncio.ensure_future(queue.put(value))])
    else:
        queue.put_nowait(value)


def test_deliver_hands_on_in_order_whether_or_not_the_buffer_is_full() -> None:
    async def run() -> tuple[list[int], int]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=3)
        taken: list[int] = []

        async def reader() -> None:
            while len(taken) < 200:
                taken.append(await queue.get())
                await asyncio.sleep(0.0005)

        reading = asyncio.ensure_future(reader())
        flow = asyncio.Event()
        service = Service()
        for n in range(200):
            await deliver(put_like_faust(queue, n), service.wait_first, flow)
        await asyncio.wait_for(reading, 5)
        await asyncio.sleep(0.01)  # cancelled waits finish
        return taken, len(asyncio.all_tasks()) - 1

    taken, left = asyncio.run(run())
    assert taken == list(range(200))
    assert left == 0  # no task is left behind by a delivery


def test_deliver_without_suspending_creates_no_task() -> None:
    async def run() -> int:
        queue: asyncio.Queue[int] = asyncio.Queue()
        created = 0
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()

        def counting(loop: asyncio.AbstractEventLoop, coro: object, **kw: object) -> object:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kw)  # type: ignore[arg-type]

        loop.set_task_factory(counting)  # type: ignore[arg-type]
        try:
            for n in range(100):
                await deliver(put_like_faust(queue, n), Service().wait_first, asyncio.Event())
        finally:
            loop.set_task_factory(factory)
        assert queue.qsize() == 100
        return created

    assert asyncio.run(run()) == 0


def test_a_suspended_flow_abandons_a_blocked_delivery() -> None:
    async def run() -> tuple[bool, int]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)
        flow = asyncio.Event()
        finished = False

        async def blocked() -> None:
            nonlocal finished
            await queue.put(1)  # never room: nobody reads
            finished = True

        asyncio.get_running_loop().call_later(0.05, flow.set)
        await asyncio.wait_for(deliver(blocked(), Service().wait_first, flow), 2)
        return finished, queue.qsize()

    assert asyncio.run(run()) == (False, 1)


def test_an_error_in_the_callback_reaches_the_drain() -> None:
    async def failing() -> None:
        raise ValueError("bad message")

    async def run() -> None:
        await deliver(failing(), Service().wait_first, asyncio.Event())

    with pytest.raises(ValueError, match="bad message"):
        asyncio.run(run())


def taken(path: Path) -> list[tuple[int, int]]:
    """The (partition, offset) lines the app wrote in full (the last one may be half written)."""
    if not path.exists():
        return []
    complete = path.read_text().rpartition("\n")[0]
    return [(int(p), int(o)) for p, o in (line.split() for line in complete.splitlines())]


def test_a_restarted_app_takes_every_partition_on_from_its_committed_offset(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Killed halfway through a backlog, the app starts again at the committed offsets (while
    its table recovers) and takes every event from there, none skipped."""
    admin = KafkaAdminClient(bootstrap_servers=fresh_broker.bootstrap_servers)
    admin.create_topics([NewTopic("quick-test", 8, 1)])
    admin.close()
    total = 60_000
    with Publisher(fresh_broker.settings()) as pub:
        for n in range(total):
            pub.send("quick-test", str(n).encode(), key=f"k{n % 5000}".encode())
    first, second = tmp_path / "first.log", tmp_path / "second.log"

    def start(out: Path) -> subprocess.Popen[bytes]:
        bootstrap = fresh_broker.bootstrap_servers
        return subprocess.Popen(
            [sys.executable, str(APP), bootstrap, "quick-test", "quick-test-app", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_until(what: str, done: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the app exited while waiting for {what}"
            if done():
                return
            time.sleep(0.05)
        seen = len(set(taken(first)) | set(taken(second)))
        pytest.fail(f"timed out waiting for {what}: {seen} of {total} events taken")

    app = start(first)
    try:
        wait_until("a third of the backlog", lambda: len(taken(first)) >= total // 3, app)
        time.sleep(1.0)  # a commit or two
    finally:
        app.send_signal(signal.SIGKILL)
        app.wait()
    before = set(taken(first))
    assert len(before) < total
    app = start(second)
    try:
        wait_until(
            "the rest of the backlog",
            lambda: len(before | set(taken(second))) >= total,
            app,
        )
    finally:
        app.terminate()
        app.wait(timeout=30)
    after = taken(second)
    by_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset in after:
        by_partition[partition].append(offset)
    for partition, offsets in by_partition.items():
        # From where it started (the committed offset) to the end, every offset once, in order.
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), partition
        # It started no later than where the first run stopped taking events.
        assert offsets[0] <= 1 + max((o for p, o in before if p == partition), default=-1), (
            partition
        )
    assert len(before | set(after)) == total
