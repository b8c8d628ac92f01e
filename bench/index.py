"""HNSW item index (stores.ItemIndex) vs exact numpy search on clustered 384-d vectors.

Figures, all measured in this run:
- build_ips: items/s inserting the catalog (one upsert call, hnswlib on all cores).
- recall_at_10 / ef: the smallest ef in a sweep whose recall@10 vs exact is >= 0.95.
- hnsw_qps vs exact_qps: single-threaded, one query at a time, through the same public
  `knn` API (ItemIndex vs ExactIndex: numpy matvec + argpartition, BLAS on one thread);
  medians of repeats. The raw library figures (hnswlib knn_query, numpy) sit beside them.
- qps_threads_locked vs qps_threads_raw: reader threads (one per core) through
  ItemIndex.knn (reader/writer lock) vs straight hnswlib calls: what the locking costs.
- upserts_per_s_while_serving: this thread upserting new items (and replacing and
  deleting some) while a reader thread serves queries, with the default two copies
  (left-right); `serving_while_writing` has the same run with one copy under the
  reader/writer lock. The readers' p50/p99 beside the idle ones show how long queries
  wait for writes.
- index_bytes, snapshot_s, restore_s: hnswlib's serialized size; snapshot + restore times.
"""

from __future__ import annotations

import os

# One BLAS thread: the exact baseline runs single-threaded like the HNSW queries.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import sys  # noqa: E402 (after the BLAS thread setting)
import tempfile  # noqa: E402 (after the BLAS thread setting)
import threading  # noqa: E402 (after the BLAS thread setting)
import time  # noqa: E402 (after the BLAS thread setting)
from pathlib import Path  # noqa: E402 (after the BLAS thread setting)

import numpy as np  # noqa: E402 (after the BLAS thread setting)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, parse_args, percentile_ms, progress  # noqa: E402 (after the BLAS thread setting)
from serving.datasets.vectors import clustered_unit_vectors  # noqa: E402 (after the BLAS thread setting)
from stores.index import ExactIndex, ItemIndex  # noqa: E402 (after the BLAS thread setting)

DIM = 384
K = 10
TARGET_RECALL = 0.95
EF_SWEEP = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def recall_at_k(results: list[list[str]], truth: list[list[str]]) -> float:
    return float(
        np.mean([len(set(r) & set(t)) / len(t) for r, t in zip(results, truth, strict=True)])
    )


def single_query_qps(
    search: object, queries: np.ndarray, repeats: int
) -> tuple[float, list[float]]:
    """Median QPS over `repeats` passes of one-at-a-time queries, plus per-query latencies."""
    rates, latencies = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        for q in queries:
            t = time.perf_counter()
            search(q)  # type: ignore[operator]
            latencies.append(time.perf_counter() - t)
        rates.append(len(queries) / (time.perf_counter() - began))
    return float(np.median(rates)), latencies


def threaded_qps(search: object, queries: np.ndarray, threads: int, seconds: float) -> float:
    """Total QPS of `threads` threads each querying in a loop for `seconds`."""
    counts = [0] * threads
    stop = threading.Event()

    def reader(slot: int) -> None:
        i = slot
        while not stop.is_set():
            search(queries[i % len(queries)])  # type: ignore[operator]
            counts[slot] += 1
            i += threads

    workers = [threading.Thread(target=reader, args=(s,)) for s in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - began)


def main() -> None:
    args = parse_args(__doc__ or "")
    n = 20_000 if args.quick else 100_000
    n_queries = 300 if args.quick else 1_000
    n_exact = 100 if args.quick else 200
    n_upserts = 3_000 if args.quick else 20_000
    repeats = 3 if args.quick else 5
    thread_seconds = 1.5 if args.quick else 3.0
    cores = os.cpu_count() or 1

    progress(f"generating {n} + {n_queries} + {n_upserts} clustered {DIM}-d vectors")
    data, _ = clustered_unit_vectors(n + n_queries + n_upserts, DIM, clusters=n // 100, seed=7)
    catalog, queries, fresh = data[:n], data[n : n + n_queries], data[n + n_queries :]
    ids = [f"item-{i}" for i in range(n)]

    progress(f"building ItemIndex (M=16, ef_construction=200, {cores} threads, 2 copies)")
    index = ItemIndex(DIM, num_threads=cores)
    began = time.perf_counter()
    index.upsert(ids, catalog)
    build_s = time.perf_counter() - began
    progress(f"built in {build_s:.1f} s; capacity {index.capacity}")
    exact = ExactIndex(DIM, initial_capacity=n)
    exact.upsert(ids, catalog)

    progress("exact ground truth")
    truth = [[h.item_id for h in hits] for hits in exact.knn_batch(queries, K)]

    chosen_ef, chosen_recall, sweep = EF_SWEEP[-1], 0.0, {}
    for ef in EF_SWEEP:
        index.ef = ef
        got = [[h.item_id for h in index.knn(q, K)] for q in queries]
        sweep[ef] = round(recall_at_k(got, truth), 4)
        progress(f"ef={ef}: recall@{K} {sweep[ef]}")
        chosen_ef, chosen_recall = ef, sweep[ef]  # the last tried, if none reaches the target
        if sweep[ef] >= TARGET_RECALL:
            break
    index.ef = chosen_ef
    index.num_threads = 1  # serving: concurrency comes from the callers' threads

    progress("single-thread QPS: ItemIndex.knn, ExactIndex.knn and the raw libraries")
    hnsw_qps, idle_latencies = single_query_qps(lambda q: index.knn(q, K), queries, repeats)
    exact_qps, _ = single_query_qps(lambda q: exact.knn(q, K), queries[:n_exact], 3)
    raw = index._copies.latest().hnsw  # the hnswlib object itself: the no-lock ceiling

    def raw_numpy(q: np.ndarray) -> np.ndarray:
        scores = catalog @ q
        top = np.argpartition(-scores, K - 1)[:K]
        return top[np.argsort(-scores[top])]

    def raw_hnsw(q: np.ndarray) -> object:
        return raw.knn_query(q, k=K, num_threads=1)

    hnsw_raw_qps, _ = single_query_qps(raw_hnsw, queries, repeats)
    exact_raw_qps, _ = single_query_qps(raw_numpy, queries[:n_exact], 3)

    progress(f"{cores} reader threads: through ItemIndex.knn vs raw hnswlib")
    locked_qps = threaded_qps(lambda q: index.knn(q, K), queries, cores, thread_seconds)
    raw_threads_qps = threaded_qps(raw_hnsw, queries, cores, thread_seconds)

    index_bytes = index.nbytes()
    with tempfile.TemporaryDirectory() as tmp:
        progress("snapshot + restore")
        began = time.perf_counter()
        index.snapshot(tmp, {"item-embeddings:0": n})
        snapshot_s = time.perf_counter() - began
        began = time.perf_counter()
        restored = ItemIndex.restore(tmp, copies=1)
        restore_s = time.perf_counter() - began
    assert restored is not None, "a fresh snapshot failed to restore"
    one_copy = restored[0]
    same = all(one_copy.knn(q, K) == index.knn(q, K) for q in queries[:50])
    assert same, "the restored index answers differently"

    serving = {}
    for name, subject in (("2copies", index), ("1copy", one_copy)):
        progress(
            f"{name}: upserting {n_upserts} items (+20% replacements, 5% deletes) while serving"
        )
        serving[name] = serve_while_writing(subject, ids, queries, fresh, seed=1)
        progress(f"{name}: {serving[name]}")

    result = {
        "bench": "index",
        "quick": args.quick,
        "n": n,
        "dim": DIM,
        "build_ips": round(n / build_s),
        "recall_at_10": chosen_recall,
        "ef": chosen_ef,
        "hnsw_qps": round(hnsw_qps),
        "exact_qps": round(exact_qps, 1),
        "ratio_hnsw_vs_exact": round(hnsw_qps / exact_qps, 1),
        "upserts_per_s_while_serving": serving["2copies"]["upserts_per_s"],
        "index_bytes": index_bytes,
        "recall_by_ef": sweep,
        "hnsw_raw_qps": round(hnsw_raw_qps),
        "exact_raw_qps": round(exact_raw_qps, 1),
        "reader_threads": cores,
        "qps_threads_locked": round(locked_qps),
        "qps_threads_raw": round(raw_threads_qps),
        "ratio_locked_vs_raw_threads": round(locked_qps / raw_threads_qps, 3),
        "idle_p50_ms": percentile_ms(idle_latencies, 50),
        "idle_p99_ms": percentile_ms(idle_latencies, 99),
        "serving_while_writing": serving,
        "build_threads": cores,
        "copies": index.copies,
        "snapshot_s": round(snapshot_s, 3),
        "restore_s": round(restore_s, 3),
    }
    emit(result)


def serve_while_writing(
    index: ItemIndex, ids: list[str], queries: np.ndarray, fresh: np.ndarray, seed: int
) -> dict[str, float]:
    """One reader thread querying flat out while this thread upserts `fresh` in batches of 100
    new items + 20 replacements, deleting 5 old items per batch."""
    rng = np.random.default_rng(seed)
    stop = threading.Event()
    latencies: list[float] = []

    def reader() -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            index.knn(queries[i % len(queries)], K)
            latencies.append(time.perf_counter() - t)
            i += 1

    prefix = f"new{index.copies}-"
    written = 0
    capacity_before = index.capacity
    thread = threading.Thread(target=reader)
    thread.start()
    began = time.perf_counter()
    for start in range(0, len(fresh), 100):
        batch = fresh[start : start + 100]
        replaced = rng.integers(0, len(ids), size=len(batch) // 5)
        index.upsert(
            [f"{prefix}{start + j}" for j in range(len(batch))] + [ids[r] for r in replaced],
            np.vstack([batch, fresh[rng.integers(0, len(fresh), size=replaced.size)]]),
        )
        index.delete([ids[r] for r in rng.integers(0, len(ids), size=len(batch) // 20)])
        written += len(batch) + replaced.size
    write_s = time.perf_counter() - began
    stop.set()
    thread.join()
    return {
        "upserts_per_s": round(written / write_s),
        "qps": round(len(latencies) / write_s),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "max_ms": percentile_ms(latencies, 100),
        "capacity_before": capacity_before,
        "capacity_after": index.capacity,
    }


if __name__ == "__main__":
    main()
