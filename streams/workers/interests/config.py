"""The interests worker's tunables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streams.faust_runtime.event_loop import EVENT_LOOPS
from streams.interests import InterestConfig

APP_ID = "recstream-interests"
ENGINE_PLACES = ("process", "local")  # where the engine runs (engine_process.ENGINES)
PUBLISHED_STATES = ("view", "full", "none")


@dataclass(frozen=True)
class Publishing:
    """What a ``user-interests`` record holds: the top ``interests`` (each with its
    ``members`` most recent items), every kept action, and the engine's state bytes
    ("none": readers need only the actions; "view" or "full" for tools that replay the
    engine)."""

    interests: int = 10
    members: int = 5
    state: str = "none"

    def __post_init__(self) -> None:
        if self.state not in PUBLISHED_STATES:
            raise ValueError(f"published state must be view, full or none: {self.state!r}")


@dataclass(frozen=True)
class InterestsWorkerConfig:
    """Tunables of the interests worker (defaults suit the embedded broker and production)."""

    app_id: str = APP_ID
    data_dir: Path = Path("data/interests-worker")
    # A batch closes once it holds every event the broker had, at batch_size events, or
    # batch_within_s after the previous batch (see streams.faust_runtime.batching.take_waiting).
    batch_size: int = 50_000
    batch_within_s: float = 1.0
    # Where the users' states live: "process" (a child process: the engine on a core of its
    # own) or "local" (this process).
    engine_in: str = "process"
    # Users per request to the engine; one request is worked on while the next is prepared
    # and the previous one's results are written.
    chunk_users: int = 1_000
    state_cache_users: int = 20_000
    item_cache_vectors: int = 100_000
    max_parked_per_user: int = 1_000
    published_interests: int = 10
    published_members: int = 5
    # Engine state bytes in each user-interests record (readers use its actions): "none",
    # "view" (actions, assignments) or "full" (bit-exact), for tools that replay the engine.
    published_state: str = "none"
    commit_interval_s: float = 1.0
    # Local stores that held forgotten data (a deleted user, a deleted item) are purged at most
    # this often (s): a purge compacts them whole (see streams.workers.interests.purge).
    purge_every_s: float = 60.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so Prometheus can reach it
    event_loop: str = "uvloop"  # or "asyncio"; uvloop falls back to asyncio when missing
    # Survivors of full collections are frozen; every this many seconds the collector sees the
    # whole heap once more (see streams.faust_runtime.heap.FreezeSurvivors). 0 = the default
    # collector.
    full_gc_every_s: float = 600.0
    engine: InterestConfig = field(default_factory=InterestConfig)
    # What each user-interests record holds (of the three published_* fields; checks them).
    publishing: Publishing = field(init=False)

    def __post_init__(self) -> None:
        publishing = Publishing(
            self.published_interests, self.published_members, self.published_state
        )
        object.__setattr__(self, "publishing", publishing)  # a frozen dataclass
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop must be uvloop or asyncio: {self.event_loop!r}")
        if self.full_gc_every_s < 0 or self.batch_within_s <= 0 or self.purge_every_s < 0:
            raise ValueError(
                "full_gc_every_s and purge_every_s must be >= 0 and batch_within_s > 0"
            )
        if self.engine_in not in ENGINE_PLACES:
            raise ValueError(f"engine_in must be process or local: {self.engine_in!r}")
        if self.chunk_users < 1 or self.state_cache_users < 1:
            raise ValueError("chunk_users and state_cache_users must be >= 1")
