"""``user-interests`` -> the user store (the latest record per user), the cache of decoded
profiles and the recently updated users; a tombstone forgets the user."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from serving.readmodels.config import ReadModelConfig
from serving.readmodels.consumer import Reject
from serving.readmodels.metrics import ServingMetrics
from serving.recommend import InterestView, UserProfile
from stores import Batch, UserStore
from streams.schemas import InvalidEvent, UserInterests, decode_for_topic, tombstone_key
from streams.topics import USER_INTERESTS


class UserMaterializer:
    """Applies ``user-interests`` records and answers ``profile`` / ``record`` queries.

    ``apply`` stages each poll's records into the store's batch; ``refresh_profiles`` updates
    the cache once that batch is written.
    """

    def __init__(
        self,
        users: UserStore,
        config: ReadModelConfig,
        metrics: ServingMetrics,
        reject: Reject,
    ) -> None:
        self.users = users
        self.config = config
        self.metrics = metrics
        self._reject = reject
        # Profiles as plain tuples (see _pack): the collector untracks those, so a full
        # collection does not walk every cached user (~40 ms per 10k users under load).
        self._profiles: OrderedDict[str, PackedProfile] = OrderedDict()
        self._profiles_lock = threading.Lock()
        self.recent_users: OrderedDict[str, int] = OrderedDict()  # user -> last event ts
        self._pending: dict[str, tuple[UserInterests | None, bytes | None]] = {}

    def apply(self, tp: Any, records: Iterable[Any], b: Batch) -> None:
        """Apply one partition's records of a poll; the user store's writes go to ``b``."""
        latest: dict[str, tuple[UserInterests | None, bytes | None]] = {}
        for m in records:
            try:
                if m.value is None:
                    latest[tombstone_key(m.key)] = (None, None)
                    continue
                rec = decode_for_topic(tp.topic, m.value)
            except InvalidEvent as exc:
                self._reject(m, tp, exc.reason)
                continue
            latest[rec.user_id] = (rec, m.value)
        self._pending.update(latest)
        for user_id, (rec, raw) in latest.items():
            if rec is None:
                self.users.delete(user_id, batch=b)
                self.metrics.records.labels(tp.topic, "deleted").inc()
            else:
                self.users.put(user_id, None, record=raw, batch=b)
                self.metrics.records.labels(tp.topic, "upserted").inc()

    def refresh_profiles(self, *, live: bool) -> None:
        """Refresh cached profiles once the batch is written (decode ``live`` users eagerly)."""
        latest, self._pending = self._pending, {}
        if not latest:
            return
        now_ms = int(time.time() * 1000)
        for user_id, (rec, _) in latest.items():
            if rec is None:
                with self._profiles_lock:
                    self._profiles.pop(user_id, None)
                self.recent_users.pop(user_id, None)
                continue
            if live:
                self._cache_profile(profile_from_record(rec, applied_ms=now_ms))
                self.metrics.freshness.observe(max(now_ms - rec.last_event_ts, 0) / 1000)
            else:
                with self._profiles_lock:
                    self._profiles.pop(user_id, None)
            self.recent_users.pop(user_id, None)
            self.recent_users[user_id] = rec.last_event_ts
            while len(self.recent_users) > self.config.recent_users:
                self.recent_users.popitem(last=False)

    def profile(self, user_id: str) -> UserProfile | None:
        """The user's profile (decoded from the stored record, cached), or None if unknown."""
        with self._profiles_lock:
            cached = self._profiles.get(user_id)
            if cached is not None:
                self._profiles.move_to_end(user_id)
        if cached is not None:
            return _unpack(cached)
        record = self.record(user_id)
        if record is None:
            return None
        profile = profile_from_record(record)
        self._cache_profile(profile)
        return profile

    def cached_applied_ms(self, user_id: str) -> int:
        """When this replica applied the user's cached profile (0 if not cached or not applied
        live): a cache lookup only, for callers that read the record themselves."""
        with self._profiles_lock:
            cached = self._profiles.get(user_id)
        return 0 if cached is None else int(cached[-1])  # applied_ms: _pack's last field

    def record(self, user_id: str) -> UserInterests | None:
        """The user's stored ``user-interests`` record, or None if unknown or unreadable."""
        raw = self.users.record(user_id)
        if raw is None:
            return None
        try:
            rec = decode_for_topic(USER_INTERESTS.name, raw)
        except InvalidEvent:
            return None
        assert isinstance(rec, UserInterests)
        return rec

    def _cache_profile(self, profile: UserProfile) -> None:
        packed = _pack(profile)
        with self._profiles_lock:
            self._profiles[profile.user_id] = packed
            self._profiles.move_to_end(profile.user_id)
            while len(self._profiles) > self.config.user_cache_size:
                self._profiles.popitem(last=False)


def profile_from_record(record: UserInterests, *, applied_ms: int = 0) -> UserProfile:
    """A ``UserProfile`` from a ``user-interests`` record.

    Seen items are the items of the record's ``actions`` (items not yet materialized locally
    still count as seen); a record without them (an older worker's) tells only its interests'
    medoids and members.
    """
    interests = tuple(
        InterestView(i.medoid, float(i.importance), int(i.size), tuple(i.members))
        for i in record.interests
    )
    if record.actions is not None:
        seen = frozenset(record.actions.items)
    else:
        seen = frozenset(m for i in interests for m in (i.medoid, *i.members))
    return UserProfile(
        user_id=record.user_id,
        interests=interests,
        seen=seen,
        n_actions=record.n_actions,
        last_event_ts=record.last_event_ts,
        last_event_id=record.last_event_id,
        updated_ms=record.updated_ms,
        applied_ms=applied_ms,
    )


PackedProfile = tuple[Any, ...]


def _pack(p: UserProfile) -> PackedProfile:
    """A ``UserProfile`` as nested plain tuples of strings and numbers: how the cache keeps it,
    since the collector untracks such tuples (dataclasses and named tuples stay tracked)."""
    interests = tuple((i.medoid, i.importance, i.size, i.members) for i in p.interests)
    return (
        p.user_id,
        interests,
        tuple(p.seen),
        p.n_actions,
        p.last_event_ts,
        p.last_event_id,
        p.updated_ms,
        p.applied_ms,
    )


def _unpack(t: PackedProfile) -> UserProfile:
    user_id, interests, seen, n_actions, last_ts, last_id, updated_ms, applied_ms = t
    return UserProfile(
        user_id=user_id,
        interests=tuple(InterestView(*i) for i in interests),
        seen=frozenset(seen),
        n_actions=n_actions,
        last_event_ts=last_ts,
        last_event_id=last_id,
        updated_ms=updated_ms,
        applied_ms=applied_ms,
    )
