"""A small generated catalogue and engagement log with hidden topics, for encoder tests.

Item texts are words drawn from one vocabulary shared by all topics, so text alone says nothing
about an item's topic. Each topic owns a few categories and tags; users engage in short sessions
within one of their hidden topics. Co-engagement therefore carries the topic, which the base
text encoder cannot see but a head trained on co-engagement (with category/tag inputs) can learn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHARED_WORDS = (
    "red blue green small large new old fast slow bright dark warm cold soft hard light heavy "
    "simple classic modern quiet loud sweet fresh early late round square long short wide deep"
).split()
CATEGORY_WORDS = (
    "amber birch cedar delta ember fjord grove harbor iris juniper kestrel lagoon meadow nectar "
    "orchid prairie quartz river sierra tundra umber violet willow yarrow zephyr basalt canyon "
    "dune estuary fern glacier heath"
).split()
TAG_WORDS = [f"tag{i}" for i in range(64)]
BASE_TS = 1_700_000_000_000
MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass(frozen=True)
class EncoderData:
    items_path: Path
    engagements_path: Path
    topic_of_item: dict[str, int]
    texts: list[str]


def write_topic_log(
    out_dir: Path,
    *,
    topics: int = 8,
    items: int = 400,
    users: int = 200,
    sessions_per_user: int = 8,
    categories_per_topic: int = 3,
    tags_per_topic: int = 6,
    seed: int = 0,
) -> EncoderData:
    """Write ``items.jsonl`` and ``engagements.jsonl`` (recstream's event formats)."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    topic = rng.integers(0, topics, size=items)
    by_topic = [np.flatnonzero(topic == t) for t in range(topics)]
    item_lines, texts, topic_of = [], [], {}
    for i in range(items):
        t = int(topic[i])
        words = rng.choice(SHARED_WORDS, size=int(rng.integers(3, 7)))
        category = CATEGORY_WORDS[
            t * categories_per_topic + int(rng.integers(categories_per_topic))
        ]
        tag_pool = TAG_WORDS[t * tags_per_topic : (t + 1) * tags_per_topic]
        tags = sorted(rng.choice(tag_pool, size=2, replace=False).tolist())
        text = " ".join(words)
        item_id = f"i{i}"
        topic_of[item_id] = t
        texts.append(text)
        item_lines.append(
            {
                "type": "item",
                "v": 1,
                "item_id": item_id,
                "text": text,
                "category": category,
                "tags": tags,
                "embedding": None,
                "ts": BASE_TS,
                "extra_key": "ignored",
            }
        )
    eng_lines: list[dict[str, Any]] = []
    for u in range(users):
        interests = rng.choice(topics, size=int(rng.integers(1, 3)), replace=False)
        ts = BASE_TS + int(rng.integers(0, DAY_MS))
        for _ in range(sessions_per_user):
            pool = by_topic[int(rng.choice(interests))]
            for _ in range(int(rng.integers(3, 7))):
                ts += int(rng.integers(1, 6)) * MINUTE_MS
                eng_lines.append(
                    {
                        "type": "engagement",
                        "v": 1,
                        "event_id": f"e{len(eng_lines)}",
                        "user_id": f"u{u}",
                        "item_id": f"i{int(rng.choice(pool))}",
                        "action": "click",
                        "weight": None,
                        "ts": ts,
                    }
                )
            ts += int(rng.integers(1, 4)) * DAY_MS
    eng_lines.sort(key=lambda e: e["ts"])
    items_path, eng_path = out_dir / "items.jsonl", out_dir / "engagements.jsonl"
    items_path.write_text("".join(json.dumps(x) + "\n" for x in item_lines))
    eng_path.write_text("".join(json.dumps(x) + "\n" for x in eng_lines))
    corpus = texts + CATEGORY_WORDS + TAG_WORDS
    return EncoderData(items_path, eng_path, topic_of, corpus)
