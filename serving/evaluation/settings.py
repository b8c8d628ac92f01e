"""What a ``recstream eval`` run is asked to do (``EvalSettings``; the defaults are the published
protocol), apart from the code that runs it so that the command line's help texts read the
defaults without loading the replay, the methods and their models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streams.embeddings.config import CoEngagementConfig, RefitConfig
from streams.interests.config import InterestConfig

# The engine configuration the evaluation uses unless told otherwise: the library defaults,
# except that nothing expires (MovieLens ratings span seven months).
EVAL_ENGINE_CONFIG = InterestConfig(window_days=3650.0)

DATASETS = ("movielens-100k", "generated")
ITEM_VECTORS = ("text", "head", "collaborative")
PRIMARY = "pinnersage"
BASELINES = ("popularity", "last_item", "mean_embedding")
# The methods compared across item spaces (collaborative static / refreshed, text).
VECTOR_METHODS = ("last_item", "mean_embedding", PRIMARY)
DEFAULT_HEAD_EPOCHS = 3


@dataclass(frozen=True)
class CollaborativeSettings:
    """The collaborative item space (``streams.embeddings``) and its refresh in the replay.

    The defaults were chosen on a validation split inside the warm-up period
    (``EvalSettings.warmup_only``; docs/quality.md), never on the test period.

    - ``coengagement`` / ``refit``: the statistics and the PPMI-SVD fit.
    - ``refresh_every``: refit every this many applied positive events during the test period
      (0: the static fit only).
    - ``merge_threshold``: the engine's Ward threshold in this space (None: the engine's),
      used unless ``recstream eval --merge-threshold`` says otherwise.
    - ``compare_text``: also run the vector methods on the text vectors (``*_text``).
    """

    coengagement: CoEngagementConfig = field(default_factory=CoEngagementConfig)
    refit: RefitConfig = field(default_factory=RefitConfig)
    refresh_every: int = 1000
    merge_threshold: float | None = 1.0
    compare_text: bool = True


@dataclass(frozen=True)
class EvalSettings:
    """Everything ``run_eval`` needs; the defaults are the published protocol."""

    dataset: str = "movielens-100k"
    k: int = 20
    positive_min_rating: float = 4.0
    weight_by_rating: bool = False
    limit_users: int | None = None
    decay_per_day: float = 0.01  # lambda of popularity, mean embedding and the main engine
    engine: InterestConfig = EVAL_ENGINE_CONFIG
    ablations: bool = True
    bootstrap: int = 1000
    seed: int = 0
    split: float = 0.8
    max_k: int = 50
    encoder_variant: str = "fp32"
    head_epochs: int = 0  # > 0: fine-tune the encoder head on training-period co-engagement
    item_vectors: str = "text"  # text, head (text + head) or collaborative
    collaborative: CollaborativeSettings = field(default_factory=CollaborativeSettings)
    warmup_only: bool = False  # replay the warm-up period only, split inside it (validation)
    model_dir: Path | None = None
    data_dir: Path | None = None
    through_kafka: bool = False  # PinnerSage states from the real interests worker (slower)
    generated: dict[str, int] = field(
        default_factory=lambda: {"users": 200, "items": 2000, "events": 20_000}
    )
