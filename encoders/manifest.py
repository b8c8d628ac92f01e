"""Manifests of exported models (``manifest.json`` for the text encoder, ``head.json`` for a head).

A model directory is self-contained::

    text_encoder.onnx        fp32 graph: (input_ids, attention_mask) -> L2-normalized embedding
    text_encoder.int8.onnx   the same, dynamically quantized (int8 weights, per channel)
    tokenizer.json           the WordPiece tokenizer (``tokenizers`` format)
    manifest.json            TextManifest below
    head.onnx, head.json     optional trained head (HeadManifest), composed after the encoder

Versions read ``<name>@<hash8>``: the hash covers what decides the embedding (weights,
tokenizer, max length), so re-exporting the same model gives the same version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Self

MANIFEST_FILE = "manifest.json"
HEAD_MANIFEST_FILE = "head.json"
FORMAT = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _ManifestFile:
    """How a manifest is read and written: ``FILE`` in the model directory, of kind ``KIND``
    and this format; keys this version does not know are ignored."""

    FILE: ClassVar[str]
    KIND: ClassVar[str]

    @classmethod
    def load(cls, model_dir: Path) -> Self:
        path, kind = model_dir / cls.FILE, cls.KIND
        if not path.is_file():
            raise FileNotFoundError(f"no {kind} manifest at {path}")
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("kind") != kind:
            raise ValueError(f"{path} is not a {kind} manifest (kind={raw.get('kind')!r})")
        if raw.get("format") != FORMAT:
            raise ValueError(f"{path}: unsupported manifest format {raw.get('format')!r}")
        known = {f.name for f in fields(cls)}  # not the ClassVars, which __dataclass_fields__ has
        return cls(**{k: v for k, v in raw.items() if k in known})

    def write(self, model_dir: Path) -> Path:
        path = model_dir / self.FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


@dataclass(frozen=True)
class TextManifest(_ManifestFile):
    """What an exported text encoder is: ``files`` maps variant ("fp32", "int8") to file name."""

    FILE: ClassVar[str] = MANIFEST_FILE
    KIND: ClassVar[str] = "text_encoder"

    name: str
    version: str
    dim: int
    max_length: int
    files: dict[str, str]
    sha256: dict[str, str]
    tokenizer: str = "tokenizer.json"
    parity: dict[str, float] = field(default_factory=dict)
    created_by: str = ""
    source: str = ""
    kind: str = KIND
    format: int = FORMAT

    def verify(self, model_dir: Path) -> None:
        """Raise ``ValueError`` if a listed file is missing or its sha256 differs."""
        for name, digest in self.sha256.items():
            path = model_dir / name
            if not path.is_file():
                raise ValueError(f"{path} is missing (listed in {MANIFEST_FILE})")
            if sha256_file(path) != digest:
                raise ValueError(f"{path} does not match the sha256 in {MANIFEST_FILE}")


@dataclass(frozen=True)
class HeadManifest(_ManifestFile):
    """A trained head: its inputs' bucket counts, and the base encoder version it was trained on."""

    FILE: ClassVar[str] = HEAD_MANIFEST_FILE
    KIND: ClassVar[str] = "head"

    version: str
    base_version: str
    dim: int
    category_buckets: int
    tag_buckets: int
    max_tags: int
    file: str = "head.onnx"
    sha256: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)
    created_by: str = ""
    kind: str = KIND
    format: int = FORMAT
