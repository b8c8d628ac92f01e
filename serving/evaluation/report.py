"""The report of ``recstream eval``: ``quality.md``, ``quality.json`` and ``recall_at_k.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serving.evaluation.settings import BASELINES, PRIMARY


def _ci(e: dict[str, float], digits: int = 4) -> str:
    return f"{e['value']:.{digits}f} [{e['lo']:.{digits}f}, {e['hi']:.{digits}f}]"


def markdown(report: dict[str, Any]) -> str:
    """The results table, the paired comparisons and the setup, as markdown."""
    k = report["k"]
    s = report["settings"]
    threshold = s["positive_min_rating"]
    positives = f"rating >= {threshold:g}" if threshold is not None else "every engagement"
    lines = [
        f"# Recommendation quality: {report['dataset']}",
        "",
        f"Chronological replay, global time split (first {s['split']:.0%} of the time range "
        f"warms up, the rest is test). {report['test_events']:,} positive test events "
        f"({positives}) from {report['users']:,} users, "
        f"{report['items']:,} items, {report['events']:,} events; each test event is ranked "
        f"against the whole catalogue (minus the user's already-rated items) from the state "
        f"before it, then applied. 95% intervals: user-level bootstrap ({s['bootstrap']} "
        f"resamples). Encoder: {report['encoder']}.",
        "",
        *(
            [
                "Validation run (`--warmup-only`): the warm-up period alone (the events before "
                "the protocol's split), split the same way inside it; the test period is not "
                "replayed.",
                "",
            ]
            if s.get("warmup_only")
            else []
        ),
        f"| method | Recall@{k} | NDCG@{k} | HitRate@{k} | Coverage@{k} | fallbacks |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        lines.append(
            f"| {name} | {_ci(m['recall_at_k'])} | {_ci(m['ndcg_at_k'])} | "
            f"{_ci(m['hit_rate_at_k'], 3)} | {_ci(m['coverage_at_k'], 3)} | {m['fallbacks']} |"
        )
    lines += [
        "",
        "Paired differences (same bootstrap resamples; an interval excluding 0 is significant):",
        "",
        f"| comparison | Recall@{k} | NDCG@{k} |",
        "|---|---|---|",
    ]
    for pair, d in report["comparisons"].items():
        lines.append(f"| {pair} | {_ci(d['recall_at_k'])} | {_ci(d['ndcg_at_k'])} |")
    lines += _spaces_table(report)
    e = report["engine"]
    c = report["counts"]
    lines += [
        "",
        "Methods: `popularity` (time-decayed counts), `last_item` (neighbours of the last "
        "positive item), `mean_embedding` (time-decayed mean of the history), `pinnersage` "
        "(streaming PinnerSage, top-3 medoids by importance, lists blended by importance "
        "quota with `serving.blend`), `pinnersage_sample3` (3 medoids sampled by importance), "
        "`pinnersage_1` / `pinnersage_5` (top 1 / 5), `pinnersage_centroid` (cluster centroids "
        "instead of medoids), `pinnersage_lambda_*` (importance decay ablation). Lambda "
        f"(per day) = {s['decay_per_day']} for every time-decayed method unless named.",
        "",
        f"Engine: merge_threshold={e['merge_threshold']}, max_clusters={e['max_clusters']}, "
        f"window_days={e['window_days']}, max_actions={e['max_actions']}, "
        f"recluster_every={e['recluster_every']}. Weight by rating: {s['weight_by_rating']}.",
        "",
        f"Counts: {c['test_positive_events']:,} positive test events, "
        f"{c['cold_start_skipped']:,} skipped as cold start (no earlier positive), "
        f"{c['repeat_skipped']:,} skipped as repeats of an already-engaged item. "
        "Fallbacks = test events a method could not answer (no state) and that got the "
        "popularity list. Coverage counts distinct items, so a bootstrap resample (~63% of "
        "the distinct users) covers fewer of them: its interval is the resamples' spread "
        "placed around the point value.",
        "",
    ]
    return "\n".join(lines)


def _spaces_table(report: dict[str, Any]) -> list[str]:
    """Collaborative runs: each vector method in each item space, and refreshed - static."""
    collab = report.get("collaborative")
    if not collab:
        return []
    k, methods, comparisons = report["k"], report["methods"], report["comparisons"]
    refreshed = collab["refresh_every"] > 0
    spaces = [("_text", "text vectors")] if any(n.endswith("_text") for n in methods) else []
    if refreshed:
        spaces += [("_static", "collaborative, static"), ("", "collaborative, refreshed")]
    else:
        spaces += [("", "collaborative, static")]
    head = " | ".join(f"{label}: Recall@{k} / NDCG@{k}" for _, label in spaces)
    cadence = (
        f"refit every {collab['refresh_every']} applied events of the test period, "
        f"{collab['refits']} refits"
        if refreshed
        else "fit once"
    )
    lines = [
        "",
        f"Static vs refreshed (collaborative vectors {cadence}; "
        f"{collab['static_items_with_vector']:,} items had a vector at the static fit):",
        "",
        f"| method | {head} |"
        + (f" refreshed - static: Recall@{k} / NDCG@{k} |" if refreshed else ""),
        "|---|" + "---|" * (len(spaces) + refreshed),
    ]
    for name in ("last_item", "mean_embedding", PRIMARY):
        cells = [
            f"{_ci(methods[name + s]['recall_at_k'])} / {_ci(methods[name + s]['ndcg_at_k'])}"
            for s, _ in spaces
        ]
        if refreshed:
            d = comparisons[f"{name} - {name}_static"]
            cells.append(f"{_ci(d['recall_at_k'])} / {_ci(d['ndcg_at_k'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Plain names are the collaborative vectors"
        + (" refit during the test period" if refreshed else "")
        + "; `*_static`: fit once on the warm-up period; `*_text`: the text vectors (with the "
        "engine's own merge threshold). A refit never sees an event before it is scored; users "
        "are rebuilt in the new space at their next event or query. Items without a "
        "collaborative vector (first engaged after the fit) are never retrieved in that space "
        "and their actions wait in the user's log until a refit gives them one; a user with no "
        "such action falls back to popularity (fallbacks).",
    ]
    return lines


def plot_recall(report: dict[str, Any], path: Path) -> None:
    """Recall@K for K = 1..max_k, one line per method (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, m in report["methods"].items():
        curve = m["recall_curve"]
        main = name in (PRIMARY, *BASELINES)
        ax.plot(
            range(1, len(curve) + 1),
            curve,
            label=name,
            linewidth=2.2 if main else 1.0,
            linestyle="-" if main else "--",
        )
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title(f"{report['dataset']}: {report['test_events']:,} test events")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def write_reports(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """``quality.md``, ``quality.json`` and ``recall_at_k.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "quality.md",
        "json": out / "quality.json",
        "plot": out / "recall_at_k.png",
    }
    paths["markdown"].write_text(markdown(report))
    paths["json"].write_text(json.dumps(report, indent=1, default=float) + "\n")
    plot_recall(report, paths["plot"])
    return paths
