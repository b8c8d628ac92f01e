"""Recommendation quality on MovieLens 100k: PinnerSage against its baselines, one JSON line.

Runs the ``recstream eval`` protocol (chronological replay, global 80/20 time split, every
positive test event ranked before it is applied) with the baselines measured in the same run.
It measures the item space the live system serves by default (named in "encoder"): the
collaborative vectors (``streams.embeddings``), fit on the warm-up period and refit during the
test period as the live role does, so ``recall_at_k_{last_item,mean_embedding,pinnersage}``
are theirs; ``recall_at_k_pinnersage_static`` is the same fit never refreshed and
``recall_at_k_pinnersage_text`` the text encoder's vectors, both in the same replay
(``--item-vectors text`` measures the text space alone, as before). Full: every user, fp32
encoder, 1,000 bootstrap resamples. ``--quick``: 200 random users, int8 encoder, 200 resamples
(< 60 s on 2 cores). Falls back to the generated data (and says so in "dataset") only when
MovieLens cannot be fetched. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.datasets.movielens import MovieLensUnavailable, ensure_movielens
from serving.evaluation import run_eval
from serving.evaluation.settings import BASELINES, ITEM_VECTORS, PRIMARY, EvalSettings

METHODS = (*BASELINES, PRIMARY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 users, int8, < 60 s")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--head-epochs", type=int, default=0, help="fit the encoder head first")
    parser.add_argument(
        "--item-vectors", choices=ITEM_VECTORS, default="collaborative", help="the item space"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    start = time.perf_counter()
    dataset = "movielens-100k"
    try:
        ensure_movielens()
    except MovieLensUnavailable as exc:
        print(
            f"MovieLens unavailable, measuring the generated data instead: {exc}", file=sys.stderr
        )
        dataset = "generated"
    settings = EvalSettings(
        dataset=dataset,
        k=args.k,
        limit_users=200 if args.quick else None,
        bootstrap=200 if args.quick else 1000,
        ablations=False,
        encoder_variant="int8" if args.quick else "fp32",
        head_epochs=args.head_epochs,
        item_vectors=args.item_vectors,
    )
    report, _ = run_eval(settings)
    out: dict[str, object] = {
        "bench": "quality",
        "quick": args.quick,
        "dataset": report["dataset"],
        "users": report["users"],
        "test_events": report["test_events"],
        "k": report["k"],
    }
    methods = report["methods"]
    for name in METHODS:
        for metric, key in (("recall_at_k", "recall"), ("ndcg_at_k", "ndcg")):
            est = methods[name][metric]
            out[f"{key}_at_k_{name}"] = round(est["value"], 5)
            out[f"{key}_at_k_{name}_ci"] = [round(est["lo"], 5), round(est["hi"], 5)]
    for name in ("pinnersage_sample3", "pinnersage_1", "pinnersage_5"):
        out[f"recall_at_k_{name}"] = round(methods[name]["recall_at_k"]["value"], 5)
    comparisons = report["comparisons"]
    for suffix in ("_static", "_text"):
        if PRIMARY + suffix in methods:
            est = methods[PRIMARY + suffix]["recall_at_k"]
            out[f"recall_at_k_{PRIMARY}{suffix}"] = round(est["value"], 5)
            out[f"recall_at_k_{PRIMARY}{suffix}_ci"] = [round(est["lo"], 5), round(est["hi"], 5)]
    if f"{PRIMARY} - {PRIMARY}_static" in comparisons:
        diff = comparisons[f"{PRIMARY} - {PRIMARY}_static"]["recall_at_k"]
        out["recall_at_k_pinnersage_refreshed_minus_static"] = round(diff["value"], 5)
        out["recall_at_k_pinnersage_refreshed_minus_static_ci"] = [
            round(diff["lo"], 5),
            round(diff["hi"], 5),
        ]
    # "Beats" = the paired bootstrap interval of the difference lies above 0.
    for base in ("popularity", "mean_embedding"):
        diff = comparisons[f"{PRIMARY} - {base}"]
        out[f"pinnersage_beats_{base}"] = bool(
            diff["recall_at_k"]["lo"] > 0 and diff["ndcg_at_k"]["lo"] > 0
        )
    best = max(METHODS, key=lambda m: methods[m]["recall_at_k"]["value"])
    out["best_method"] = best
    out["encoder"] = report["encoder"]
    if report["collaborative"] is not None:
        out["refresh_every"] = report["collaborative"]["refresh_every"]
        out["refits"] = report["collaborative"]["refits"]
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
