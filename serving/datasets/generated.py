"""Synthetic catalogue and engagement log with known ground truth (``recstream generate``).

Items belong to latent topics and get short texts drawn from per-topic vocabularies (real
English words, so a pretrained text encoder places same-topic items together). Each user has
1-6 latent interests whose weights drift over time. The output is deterministic per seed:

- ``items.jsonl``: ``item`` events
- ``engagements.jsonl``: ``engagement`` events, in time order
- ``truth.json``: topic of every item and each user's interests (for tests and evaluation)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streams.schemas import Engagement, Item

THEMES: dict[str, list[str]] = {
    "cooking": "recipe pasta garlic oven roast sauce bake kitchen flavor spice dinner simmer herbs".split(),
    "hiking": "trail summit mountain backpack ridge forest campsite boots alpine canyon trek peak".split(),
    "jazz": "saxophone trumpet swing bebop improvisation quartet bass groove vinyl trio blues piano".split(),
    "gardening": "tomato seedling compost soil bloom pruning greenhouse perennial mulch harvest roses".split(),
    "astronomy": "telescope galaxy nebula planet orbit comet stargazing eclipse cosmos lunar meteor".split(),
    "fitness": "workout squat cardio muscle stretching treadmill strength sprint yoga protein gym".split(),
    "photography": "camera lens aperture portrait exposure tripod shutter landscape film zoom flash".split(),
    "woodworking": "chisel lumber joinery sanding oak plank workbench dovetail varnish carving saw".split(),
    "soccer": "goalkeeper striker penalty league midfield tackle stadium dribble offside match cup".split(),
    "fashion": "dress denim runway jacket boots vintage couture scarf handbag silk outfit style".split(),
    "travel": "passport airport hotel itinerary beach island luggage flight cruise resort tour map".split(),
    "gaming": "console controller quest multiplayer level boss arcade speedrun pixel joystick rpg".split(),
    "baking": "sourdough dough flour yeast croissant pastry cake frosting oven loaf muffin butter".split(),
    "cycling": "bicycle pedal helmet gear saddle peloton mountainbike chain spokes climb velodrome".split(),
    "chess": "gambit checkmate bishop knight rook endgame opening pawn grandmaster castling queen".split(),
    "aquariums": "fish coral reef tank filter guppy algae aquarium shrimp cichlid plants water".split(),
    "poetry": "verse sonnet stanza rhyme haiku poet metaphor ballad lyric anthology ode meter".split(),
    "cars": "engine turbo sedan horsepower racing tires coupe garage exhaust convertible drift".split(),
    "coffee": "espresso latte roast barista beans grinder crema brew arabica mocha cappuccino".split(),
    "knitting": "yarn needles wool sweater stitch pattern crochet cardigan mittens skein purl".split(),
    "birdwatching": "binoculars warbler sparrow migration feathers hawk owl heron nest songbird".split(),
    "architecture": "facade cathedral skyscraper concrete arch blueprint column bridge modernist dome".split(),
    "skiing": "slope powder snowboard chairlift goggles alpine moguls avalanche lodge downhill".split(),
    "pottery": "clay kiln glaze wheel ceramic vase porcelain stoneware mug sculpt firing bowl".split(),
}
ADJECTIVES = (
    "best easy classic modern simple ultimate quick beautiful hidden favorite cozy epic".split()
)
ACTIONS = ("view", "click", "like", "save")
ACTION_PROBS = (0.55, 0.28, 0.11, 0.06)
BASE_TS = 1_700_000_000_000
DAY_MS = 86_400_000


@dataclass(frozen=True)
class GeneratedData:
    items: list[Item]
    engagements: list[Engagement]
    truth: dict[str, object]


def generate(
    users: int = 200,
    items: int = 2000,
    events: int = 20_000,
    *,
    seed: int = 0,
    topics: int | None = None,
    days: float = 60.0,
    drift: float = 0.3,
) -> GeneratedData:
    """Generate a catalogue, an engagement log and the ground truth, deterministically."""
    if min(users, items, events) <= 0:
        raise ValueError("users, items and events must be positive")
    rng = np.random.default_rng(seed)
    names = list(THEMES)
    n_topics = min(topics or len(names), len(names))
    topic_names = names[:n_topics]

    item_topic = rng.integers(0, n_topics, size=items)
    catalogue: list[Item] = []
    for i in range(items):
        t = int(item_topic[i])
        vocab = THEMES[topic_names[t]]
        words = rng.choice(vocab, size=3, replace=False)
        text = f"{rng.choice(ADJECTIVES)} {words[0]} {words[1]} and {words[2]}"
        tags = sorted(set(rng.choice(vocab, size=2, replace=False).tolist()))
        catalogue.append(
            Item(
                item_id=f"i{i}", text=text, category=topic_names[t], tags=tags, ts=BASE_TS - DAY_MS
            )
        )
    members = [np.flatnonzero(item_topic == t) for t in range(n_topics)]
    # Zipf-like popularity inside each topic.
    popularity = [1.0 / np.arange(1, len(m) + 1) ** 0.8 for m in members]
    popularity = [p / p.sum() if len(p) else p for p in popularity]
    nonempty = np.array([len(m) > 0 for m in members])

    n_interests = rng.integers(1, 7, size=users)
    user_topics: list[np.ndarray] = []
    user_weights: list[np.ndarray] = []
    for u in range(users):
        choices = np.flatnonzero(nonempty)
        k = min(int(n_interests[u]), len(choices))
        user_topics.append(rng.choice(choices, size=k, replace=False))
        user_weights.append(rng.dirichlet(np.ones(k) * 2.0))
    activity = rng.pareto(1.5, size=users) + 1.0
    activity /= activity.sum()

    ev_user = rng.choice(users, size=events, p=activity)
    ev_ts = np.sort(rng.uniform(0, days * DAY_MS, size=events)).astype(np.int64) + BASE_TS
    ev_action = rng.choice(len(ACTIONS), size=events, p=ACTION_PROBS)
    log: list[Engagement] = []
    for e in range(events):
        u = int(ev_user[e])
        frac = (ev_ts[e] - BASE_TS) / (days * DAY_MS)
        # Interest weights drift: a slow sinusoid per interest, phase from the user's id.
        k = len(user_topics[u])
        phase = (u * 0.618 + np.arange(k) / max(k, 1)) * 2 * np.pi
        w = user_weights[u] * (1.0 + drift * np.sin(2 * np.pi * frac + phase))
        t = int(user_topics[u][rng.choice(k, p=w / w.sum())])
        item = int(members[t][rng.choice(len(members[t]), p=popularity[t])])
        log.append(
            Engagement(
                event_id=f"e{seed}-{e}",
                user_id=f"u{u}",
                item_id=f"i{item}",
                action=ACTIONS[int(ev_action[e])],
                ts=int(ev_ts[e]),
            )
        )
    truth: dict[str, object] = {
        "seed": seed,
        "topics": topic_names,
        "items": {f"i{i}": int(item_topic[i]) for i in range(items)},
        "users": {
            f"u{u}": {
                "topics": [int(t) for t in user_topics[u]],
                "weights": [round(float(w), 6) for w in user_weights[u]],
            }
            for u in range(users)
        },
    }
    return GeneratedData(catalogue, log, truth)


def write(data: GeneratedData, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "items": out_dir / "items.jsonl",
        "engagements": out_dir / "engagements.jsonl",
        "truth": out_dir / "truth.json",
    }
    with paths["items"].open("w") as f:
        f.writelines(it.model_dump_json() + "\n" for it in data.items)
    with paths["engagements"].open("w") as f:
        f.writelines(ev.model_dump_json() + "\n" for ev in data.engagements)
    paths["truth"].write_text(json.dumps(data.truth, indent=1, sort_keys=True))
    return paths
