"""Where exported models live, and exporting the pretrained encoder on first use.

``default_model_dir()`` is ``$RECSTREAM_MODEL_DIR`` if set, else ``./data/models/text`` (relative
to the working directory). ``ensure_exported()`` makes a fresh checkout work without a manual
export step: it exports the pretrained all-MiniLM-L6-v2 there once (about 10 s on 2 cores),
under a file lock so concurrent workers export only once. Torch is imported only if it exports.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from encoders.manifest import MANIFEST_FILE, TextManifest

MODEL_DIR_ENV = "RECSTREAM_MODEL_DIR"
DEFAULT_MODEL_DIR = Path("data/models/text")

log = logging.getLogger(__name__)


def default_model_dir() -> Path:
    """``$RECSTREAM_MODEL_DIR`` or ``./data/models/text``."""
    return Path(os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR)


def exported_manifest(model_dir: Path) -> TextManifest | None:
    """The manifest of a complete export in ``model_dir`` (files checked by sha256), or None."""
    if not (model_dir / MANIFEST_FILE).is_file():
        return None
    try:
        manifest = TextManifest.load(model_dir)
        manifest.verify(model_dir)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the export in %s: %s", model_dir, exc)
        return None
    return manifest


def ensure_exported(model_dir: Path | None = None) -> TextManifest:
    """Return the export in ``model_dir`` (default ``default_model_dir()``), exporting if needed.

    A directory with a complete, intact export is left alone (whatever model it holds). Raises
    ``PretrainedModelMissing`` (naming the package to install) if it must export without it.
    """
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    manifest = exported_manifest(model_dir)
    if manifest is not None:
        return manifest
    model_dir.mkdir(parents=True, exist_ok=True)
    with (model_dir / ".export.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be exporting right now
        manifest = exported_manifest(model_dir)
        if manifest is not None:
            return manifest
        from encoders.export import export_text_encoder  # imports torch: only when needed

        log.info("exporting the pretrained text encoder to %s (first use)", model_dir)
        return export_text_encoder(model_dir)
