"""The semantic cache's speed, measured side by side in one run.

    python scripts/bench_cache.py [--sizes 10000 100000] [--queries 200] [--requests 5] [--skip-serve]

1. Store: the cache's own filtered search (`VectorStore.search`: namespace, model, engines,
   context, parameters, not expired, top-3 above the threshold) and exact lookup by id,
   at each size, for the embedded Qdrant engine (qdrant-edge-py, `EdgeStore`) and for
   qdrant-client's local mode (`QdrantServerStore(":memory:")`) — same entries, same
   queries, same code path; p50/p99 and the ratio.
2. End to end through Ray Serve (the tiny profile with its cache on): the same question
   answered by an exact cache hit, a semantic cache hit (a paraphrase), the Scout path
   and the Validator path (cache bypassed), sequentially, greedy; latency p50 and the
   ratio of each path to a hit.

Entries are random unit vectors with realistic payloads (10 namespaces, 20 contexts, 4
parameter sets). Writes reports/bench_cache.{json,md,png}. Absolute times on a shared
2-core machine are noise; the ratios, measured side by side, are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.cache.keys import digest  # noqa: E402
from serving.cache.store import CacheEntry, Match, VectorStore  # noqa: E402
from serving.cache.verifier import TRAINED_VERIFIER  # noqa: E402

DIM = 384
NAMESPACES, CONTEXTS, PARAMS = 10, 20, 4
QUESTION = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def entries(n: int, rng: np.random.Generator) -> tuple[list[CacheEntry], np.ndarray]:
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    now = time.time()
    out = [
        CacheEntry(
            namespace=f"ns{i % NAMESPACES}", model="auto", fingerprint="fp", exact=digest(["bench", i]),
            context=f"ctx{i % CONTEXTS}", params=f"p{i % PARAMS}", question=f"question {i}", answer=f"answer {i}",
            finish_reason="stop", prompt_tokens=20, completion_tokens=40, tier="validator", engine_model="large",
            confidence=None, created_at=now, expires_at=now + 86400, last_hit_at=now,
        )
        for i in range(n)
    ]
    return out, vecs


def fill(store: VectorStore, items: list[CacheEntry], vecs: np.ndarray, batch: int = 1000) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(items), batch):
        store.upsert([(e, vecs[i].tolist()) for i, e in enumerate(items[s:s + batch], start=s)])
    return time.perf_counter() - t0


def time_queries(store: VectorStore, items: list[CacheEntry], vecs: np.ndarray, n: int,
                 rng: np.random.Generator) -> dict:
    picks = rng.integers(0, len(items), n)
    search_ms, get_ms, found = [], [], 0
    for i in picks:
        e = items[i]
        # A near-duplicate of a stored question: the stored one should come back.
        q = vecs[i] + 0.02 * rng.standard_normal(DIM).astype(np.float32)
        match = Match(namespace=e.namespace, model=e.model, fingerprint=e.fingerprint, context=e.context,
                      params=e.params, now=time.time())
        t0 = time.perf_counter()
        hits = store.search((q / np.linalg.norm(q)).tolist(), match, 3, 0.9)
        search_ms.append((time.perf_counter() - t0) * 1000)
        found += bool(hits) and hits[0][0].exact == e.exact
        t0 = time.perf_counter()
        store.get([e.id])
        get_ms.append((time.perf_counter() - t0) * 1000)
    return {"queries": int(n), "search_p50_ms": pct(search_ms, 50), "search_p99_ms": pct(search_ms, 99),
            "get_p50_ms": pct(get_ms, 50), "get_p99_ms": pct(get_ms, 99), "recall_at_1": found / n}


def bench_stores(sizes: list[int], queries: int, client_queries: int) -> list[dict]:
    from serving.cache.edge import EdgeStore
    from serving.cache.qdrant_server import QdrantServerStore

    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        items, vecs = entries(n, rng)
        tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
        try:
            for name, nq in (("qdrant-edge (embedded engine)", queries), ("qdrant-client local mode", client_queries)):
                store: VectorStore = (EdgeStore(tmp / "edge", DIM) if name.startswith("qdrant-edge")
                                      else QdrantServerStore(DIM, location=":memory:"))
                fill_s = fill(store, items, vecs)
                if hasattr(store, "_shard"):
                    store._shard.optimize()  # what the engine does in the background: build the HNSW index
                row = {"backend": name, "entries": n, "fill_s": round(fill_s, 2),
                       **time_queries(store, items, vecs, nq, np.random.default_rng(1))}
                store.close()
                rows.append(row)
                print(f"  {name:32s} {n:>7d} entries: search p50 {row['search_p50_ms']:.2f} ms, "
                      f"p99 {row['search_p99_ms']:.2f} ms ({row['queries']} queries), "
                      f"fill {fill_s:.1f} s", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def bench_serve(profile: str, requests: int, port: int, verifier: str | None = None) -> dict:
    import httpx
    import ray
    from ray import serve

    from deployments.app import build_app
    from serving.config import load_profile

    config = load_profile(profile)
    config.cache.enabled = True
    config.cache.path = Path(tempfile.mkdtemp(prefix="bench-cache-serve-"))
    config.cache.admit_truncated = True
    if verifier:  # propose, then verify: the semantic hit pays for the verifier's reading of the pair
        config.cache.verifier.model = verifier
        if verifier in ("validator", "scout"):
            # A cascade model reads the pair: this measures what that costs on the hit path, not its judgement,
            # so the paraphrase is served whatever it says (threshold 0), and a CPU prefill is given time.
            config.cache.verifier.threshold = 0.0
            config.cache.verifier.timeout_s = 30.0
            config.cache.timeout_s = 60.0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, list[float]] = {"cache exact hit": [], "cache semantic hit": [], "scout path": [],
                                       "validator path": []}
    cache_stage_ms: list[float] = []
    rules: list[str] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config.model_dump(mode="json")), name="infopt", route_prefix="/")
        with httpx.Client(base_url=base, timeout=600) as c:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)

            def ask(question: str, model: str, cache: dict) -> tuple[float, dict]:
                body = {"model": model, "temperature": 0, "max_tokens": 32, "cache": cache,
                        "messages": [{"role": "user", "content": question}]}
                t0 = time.perf_counter()
                r = c.post("/v1/chat/completions", json=body)
                elapsed = (time.perf_counter() - t0) * 1000
                r.raise_for_status()
                return elapsed, r.json()["route"]

            ask(QUESTION, "scout", {"mode": "bypass"})  # warm-up
            ask(QUESTION, "validator", {"mode": "bypass"})
            _, route = ask(QUESTION, "validator", {"mode": "refresh", "namespace": "bench"})
            assert route["stages"][-1]["decision"] == "admitted", route
            for _ in range(requests):
                for label, q, model, cache, tier in (
                    ("cache exact hit", QUESTION, "validator", {"namespace": "bench"}, "cache"),
                    ("cache semantic hit", PARAPHRASE, "validator", {"namespace": "bench"}, "cache"),
                    ("scout path", QUESTION, "scout", {"mode": "bypass"}, "scout"),
                    ("validator path", QUESTION, "validator", {"mode": "bypass"}, "validator"),
                ):
                    ms, route = ask(q, model, cache)
                    if route["tier"] != tier:
                        raise RuntimeError(f"{label}: expected tier {tier}, got {route}")
                    results[label].append(ms)
                    if tier == "cache":
                        stage = next(st for st in route["stages"] if st["stage"] == "cache")
                        cache_stage_ms.append(stage["latency_ms"])
                        if label == "cache semantic hit":
                            rules.append(str(stage.get("detail", {}).get("rule")))
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(config.cache.path, ignore_errors=True)
    hit = statistics.median(results["cache exact hit"])
    rows = [{"path": k, "p50_ms": statistics.median(v), "ratio_to_exact_hit": statistics.median(v) / hit,
             "n": len(v)} for k, v in results.items()]
    semantic = statistics.median(results["cache semantic hit"])
    return {"profile": profile, "max_tokens": 32, "rows": rows, "verifier": verifier,
            "semantic_rules": sorted(set(rules)),
            "scout_path_over_semantic_hit": statistics.median(results["scout path"]) / semantic,
            "cache_stage_p50_ms": statistics.median(cache_stage_ms)}


def render(result: dict) -> str:
    lines = ["### Store lookup (filtered top-3 search and exact get, one thread)", "",
             "| backend | entries | search p50 ms | search p99 ms | get p50 ms | recall@1 | queries | fill s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["stores"]:
        lines.append(f"| {r['backend']} | {r['entries']:,} | {r['search_p50_ms']:.2f} | {r['search_p99_ms']:.2f} | "
                     f"{r['get_p50_ms']:.2f} | {r['recall_at_1']:.2f} | {r['queries']} | {r['fill_s']:.1f} |")
    lines.append("")
    by = {(r["backend"], r["entries"]): r for r in result["stores"]}
    for n in sorted({r["entries"] for r in result["stores"]}):
        e, c = by.get(("qdrant-edge (embedded engine)", n)), by.get(("qdrant-client local mode", n))
        if e and c:
            lines.append(f"- {n:,} entries: qdrant-edge search is **{c['search_p50_ms'] / e['search_p50_ms']:.0f}x** "
                         f"faster at p50 ({e['search_p50_ms']:.2f} vs {c['search_p50_ms']:.1f} ms), "
                         f"{c['search_p99_ms'] / e['search_p99_ms']:.0f}x at p99.")
    if result.get("serve"):
        s = result["serve"]
        lines += ["", f"### End to end through Ray Serve ({s['profile']} profile, max_tokens {s['max_tokens']}, "
                          f"verifier: {s.get('verifier') or 'none'})", "",
                  "| path | p50 ms | x exact hit | n |", "|---|---|---|---|"]
        for r in s["rows"]:
            lines.append(f"| {r['path']} | {r['p50_ms']:.1f} | {r['ratio_to_exact_hit']:.1f} | {r['n']} |")
        lines += ["", f"Cache stage inside the ingress (lookup incl. embedding for semantic): p50 "
                      f"{s['cache_stage_p50_ms']:.1f} ms."]
        if "scout_path_over_semantic_hit" in s:
            lines.append(f"Semantic hits decided by: {', '.join(s['semantic_rules'])}; the Scout path takes "
                         f"**{s['scout_path_over_semantic_hit']:.0f}x** a semantic hit's time.")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if result.get("serve") else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5))
    ax = axes[0] if panels == 2 else axes
    labels = [f"{r['backend'].split(' ')[0]}\n{r['entries'] // 1000}k" for r in result["stores"]]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [r["search_p50_ms"] for r in result["stores"]], 0.4, label="p50")
    ax.bar(x + 0.2, [r["search_p99_ms"] for r in result["stores"]], 0.4, label="p99")
    ax.set_yscale("log")
    ax.set_xticks(x, labels)
    ax.set(ylabel="filtered search, ms (log)", title="Store lookup")
    ax.legend()
    if panels == 2:
        rows = result["serve"]["rows"]
        axes[1].bar([r["path"].replace(" ", "\n", 1) for r in rows], [r["p50_ms"] for r in rows],
                    color=["tab:green", "tab:green", "tab:orange", "tab:red"])
        axes[1].set_yscale("log")
        axes[1].set(ylabel="end-to-end p50, ms (log)", title="Same question, four paths (Ray Serve)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200, help="queries per size for qdrant-edge")
    ap.add_argument("--client-queries", type=int, default=30,
                    help="queries per size for qdrant-client local mode (slow at 100k)")
    ap.add_argument("--requests", type=int, default=5, help="end-to-end requests per path")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--port", type=int, default=8019)
    ap.add_argument("--skip-serve", action="store_true", help="only the store part (no models needed)")
    ap.add_argument("--verifier", nargs="?", const=TRAINED_VERIFIER, default=None,
                    choices=[TRAINED_VERIFIER, "validator", "scout"],
                    help="end to end with the cache's pair verifier on: the trained cross-encoder (the default; "
                    "infopt models prepare --verifier) or a cascade model")
    ap.add_argument("--skip-stores", action="store_true", help="only the end-to-end part")
    ap.add_argument("--out", type=Path, default=REPO / "reports")
    ns = ap.parse_args()

    result: dict = {"dimension": DIM, "sizes": ns.sizes}
    print("store lookup:", flush=True)
    result["stores"] = [] if ns.skip_stores else bench_stores(ns.sizes, ns.queries, ns.client_queries)
    if not ns.skip_serve:
        print("end to end through Ray Serve:", flush=True)
        result["serve"] = bench_serve(ns.profile, ns.requests, ns.port, ns.verifier)
    text = render(result)
    print("\n" + text)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "bench_cache.json").write_text(json.dumps(result, indent=2))
    (ns.out / "bench_cache.md").write_text(text + "\n")
    plot(result, ns.out / "bench_cache.png")
    print(f"\nwrote {ns.out / 'bench_cache.md'}, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
