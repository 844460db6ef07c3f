"""Scout path vs Validator path, and what each Ray Serve hop costs, measured in one run.

    python scripts/bench_tiers.py --profile tiny [--requests 12] [--max-tokens 64] [--hops 30]

1. Deploys the profile's app (Ingress -> Scout, Validator) on Ray Serve.
2. Tiers: the same prompts (MT-Bench first turns when ../shared/data is there) through
   HTTP with model=scout, model=validator and model=auto, sequentially, greedy: latency
   p50/p99, completion tokens/s, and the route mix of 'auto'.
3. Hops, with max_tokens=1 so the engine's work is one short prefill and the rest is
   overhead: (a) HTTP -> proxy -> Ingress -> LLMServer, (b) DeploymentHandle ->
   LLMServer from the driver, then, after Serve is shut down, (c) the same vLLM engine
   called in-process (vllm.LLM). (a)-(b) is the proxy + ingress hop; (b)-(c) the
   LLMServer hop.

4. Request paths: the Ray handle calls each path of the deployed app makes (cache hit, Scout
   answer, escalation, validator-direct, ...), counted from the code for the deployments the
   app really has (`serve.status()`) and its config (`hop_paths`). Every call is awaited before
   the next starts, so they add up in series.
5. The analyzer hop (when the analyzer is on): `RequestAnalyzer.analyze` through its handle
   (which calls the Embedder's) vs the Embedder's handle called directly for the same question,
   vs the analyzer plan "Ingress-side": an in-process `RequestAnalyzer` (serving.analyzer) over
   the Embedder's handle, as the Ingress runs it when there is no RequestAnalyzer deployment.
   An app without that deployment gets the last two rows and a note.

The cache is off unless `--with-cache` (tier rows would otherwise be cache hits); with it on,
tier and hop requests bypass it (`cache.mode: bypass`) and the path table includes it. The
analyzer follows the profile (or `INFOPT_ANALYZER__ENABLED=true`).

Prints the tables with ratios and writes reports/bench_tiers.{json,md} (+ a PNG plot when
matplotlib is installed). Absolute times on a shared 2-core machine are noise; the ratios,
measured side by side, are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FALLBACK_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Explain what a hash map is in two sentences.",
    "What is 17 times 23?",
    "Give three tips for writing clear emails.",
    "What does HTTP status 404 mean?",
]
HOP_PROMPT = "The quick brown fox"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def prompts(n: int) -> tuple[list[str], str]:
    path = REPO.parent / "shared" / "data" / "mt_bench" / "mt_bench_question.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # Spread over categories: every k-th question.
        step = max(1, len(rows) // n)
        return [r["turns"][0] for r in rows[::step][:n]], f"MT-Bench first turns ({path.name})"
    return (FALLBACK_PROMPTS * n)[:n], "built-in prompts (../shared/data absent)"


def summarize(lat_s: list[float], tokens: list[int]) -> dict:
    tps = [t / s for t, s in zip(tokens, lat_s, strict=True) if s > 0]
    return {
        "n": len(lat_s),
        "p50_ms": pct(lat_s, 50) * 1000,
        "p99_ms": pct(lat_s, 99) * 1000,
        "mean_tokens": statistics.mean(tokens) if tokens else 0,
        "tokens_per_s": statistics.median(tps) if tps else 0.0,
    }


# With the cache on, tier and hop requests skip it: they measure the engines, never a cache hit.
BYPASS = {"cache": {"mode": "bypass"}}


def bench_tiers(base: str, ps: list[str], max_tokens: int, extra: dict | None = None) -> tuple[dict, dict]:
    import httpx

    out, mix = {}, {}
    with httpx.Client(base_url=base, timeout=900) as c:
        for model in ("scout", "validator", "auto"):
            lat, toks = [], []
            for p in ps:
                t = time.perf_counter()
                r = c.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": p}],
                    "temperature": 0, "max_tokens": max_tokens, **(extra or {})})
                lat.append(time.perf_counter() - t)
                r.raise_for_status()
                body = r.json()
                toks.append(body["usage"]["completion_tokens"])
                if model == "auto":
                    tier = body["route"]["tier"]
                    mix[tier] = mix.get(tier, 0) + 1
            out[model] = summarize(lat, toks)
    return out, mix


def bench_http(base: str, model: str, n: int, extra: dict | None = None) -> list[float]:
    import httpx

    lat = []
    with httpx.Client(base_url=base, timeout=300) as c:
        for _ in range(n):
            t = time.perf_counter()
            r = c.post("/v1/completions", json={"model": model, "prompt": HOP_PROMPT, "temperature": 0,
                                                "max_tokens": 1, **(extra or {})})
            lat.append(time.perf_counter() - t)
            r.raise_for_status()
    return lat


def bench_handle(deployment: str, model_id: str, n: int) -> list[float]:
    from ray import serve
    from ray.serve.llm.openai_api_models import CompletionRequest

    handle = serve.get_deployment_handle(deployment, app_name="infopt")

    async def run() -> list[float]:
        lat = []
        for _ in range(n):
            req = CompletionRequest(model=model_id, prompt=HOP_PROMPT, temperature=0, max_tokens=1)
            t = time.perf_counter()
            async for _item in handle.completions.options(stream=True).remote(req):
                pass
            lat.append(time.perf_counter() - t)
        return lat

    return asyncio.run(run())


def bench_direct(model_path: str, engine_cfg, n: int) -> list[float]:
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(engine_cfg.kv_cache_space_gib)
    if engine_cfg.cpu_threads_bind:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = engine_cfg.cpu_threads_bind
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, dtype=engine_cfg.dtype, max_model_len=engine_cfg.max_model_len,
              enforce_eager=engine_cfg.enforce_eager, enable_prefix_caching=engine_cfg.enable_prefix_caching)
    sp = SamplingParams(temperature=0, max_tokens=1)
    llm.generate([HOP_PROMPT], sp, use_tqdm=False)  # warm-up
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        llm.generate([HOP_PROMPT], sp, use_tqdm=False)
        lat.append(time.perf_counter() - t)
    return lat


ANALYZER_PROMPT = "How do I reverse a list in Python?"


def hop_paths(deployments: set[str], analyzer: bool, cache: bool, verified: bool, near_miss: bool
              ) -> dict[str, list[tuple[str, bool]]]:
    """The Ray handle calls of each request path, counted from the code; `(call, optional)` in call order.

    Every call is awaited before the next is made (TieredRouter: analyzer, cache lookup, Scout,
    Validator, admission), so a path's calls add up in series; a call made from inside another
    deployment (RequestAnalyzer -> Embedder) is part of its caller's time. HTTP requests make one
    more, proxy -> Ingress, before all of these. `deployments` are the app's (serve.status()):
    without a RequestAnalyzer deployment the analyzer runs in the Ingress and calls the Embedder.
    """
    if not analyzer:
        plan: list[tuple[str, bool]] = []
    elif "RequestAnalyzer" in deployments:
        plan = [("Ingress -> RequestAnalyzer.analyze", False), ("RequestAnalyzer -> Embedder.embed", False)]
    else:
        plan = [("Ingress -> Embedder.embed (analyzer in the Ingress)", False)]
    # The lookup reuses the analyzer's vector (same normalised question); without an analyzer the
    # SemanticCache embeds the question itself, unless the exact key hits first.
    exact = [("Ingress -> SemanticCache.lookup", False)] if cache else []
    lookup = exact + ([("SemanticCache -> Embedder.embed", False)] if cache and not analyzer else [])
    admit = [("Ingress -> SemanticCache.admit (the lookup's vector)", False)] if cache else []
    scout = [("Ingress -> Scout.chat", False)]
    plain = [("Ingress -> Validator.chat", False)]
    # Verified escalation: one prefill scores the draft; a second call continues after the accepted
    # prefix unless the draft already ends the answer. A plain call instead when verification is paused.
    verify = ([("Ingress -> Validator.completions (score the draft)", False),
               ("Ingress -> Validator.completions (continue after the accepted prefix)", True)]
              if verified else plain)
    paths = {}
    if cache:
        paths["cache hit (exact)"] = plan + exact
        paths["cache hit (semantic)"] = plan + lookup
    paths["Scout answer"] = plan + lookup + scout + admit
    paths["escalation (Scout, then Validator)"] = plan + lookup + scout + verify + admit
    if analyzer:
        paths["validator-direct (predicted hard)"] = plan + lookup + plain + admit
    if cache and near_miss and verified:
        paths["near miss (cached draft verified)"] = plan + lookup + verify + admit
    return paths


def hop_count(calls: list[tuple[str, bool]]) -> str:
    """'n' handle calls, or 'min-max' when some are optional."""
    low, high = sum(not optional for _, optional in calls), len(calls)
    return str(high) if low == high else f"{low}-{high}"


def serve_embedder(handle, dimension: int):
    """`ServeEmbedder` over an Embedder handle, wherever this checkout keeps it."""
    try:
        from serving.handles import ServeEmbedder
    except ImportError:  # before the handles got a package of their own
        from serving.cache.embedder import ServeEmbedder
    return ServeEmbedder(handle, dimension)


def bench_analyzer(config, deployments: set[str], n: int) -> dict:
    """The analyzer's hop: plan latency through the RequestAnalyzer's handle, the Embedder's handle alone
    (the same question), and an in-process `RequestAnalyzer` over the Embedder's handle (the plan as the
    Ingress makes it without a RequestAnalyzer deployment). Interleaved, so drift hits all alike.

    Timed from this driver, which stands in for the Ingress's process: both call the handles from
    outside the callee's replica.
    """
    from ray import serve

    from serving.analyzer import HFTokenCounter, RequestAnalyzer
    from serving.engines.base import GenerationRequest

    try:
        from serving.policy.cache import embedded_question
    except ImportError:  # where it was before the cache policy got a module of its own
        from serving.analyzer.profile import embedded_question

    out: dict = {"n": n, "notes": []}
    if not config.analyzer.enabled:
        out["notes"].append("analyzer off in this config: nothing to measure (INFOPT_ANALYZER__ENABLED=true)")
        return out
    if "Embedder" not in deployments:
        out["notes"].append("no Embedder deployment: nothing to measure")
        return out
    request = GenerationRequest(messages=[{"role": "user", "content": ANALYZER_PROMPT}], max_tokens=64,
                                temperature=0)
    text = embedded_question(request)
    embedder = serve.get_deployment_handle("Embedder", app_name="infopt")
    cfg = config.analyzer
    tokens = HFTokenCounter(config.resolve_model(cfg.tokenizer or config.validator.model))
    _ = tokens.tokenizer  # loaded now, not in the first timed call
    # Built as the Ingress builds it (serving.compose.build_service), priority classes included.
    extra = {"priority": config.priority} if hasattr(config, "priority") else {}
    local = RequestAnalyzer(cfg, serve_embedder(embedder, config.cache.embedder.dimension), tokens, **extra)
    calls = {"embedder": lambda: embedder.embed.remote(text),
             "ingress_side": lambda: local.analyze(request, model="auto")}
    if "RequestAnalyzer" in deployments:
        handle = serve.get_deployment_handle("RequestAnalyzer", app_name="infopt")
        calls["handle"] = lambda: handle.analyze.remote(request, "auto", None)
    else:
        out["notes"].append("no RequestAnalyzer deployment (the analyzer runs in the Ingress): "
                            "its handle row is not measured")

    async def run() -> dict[str, list[float]]:
        for _ in range(3):  # warm-up: batching queues, tokenizer, gRPC channels
            for call in calls.values():
                await call()
        plan = await local.analyze(request, model="auto")
        if plan.error:  # an analysis that failed (timeout, embedder error) would time the fallback path
            raise RuntimeError(f"the in-process analyzer failed: {plan.error}")
        lat: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(n):
            for key, call in calls.items():
                t = time.perf_counter()
                await call()
                lat[key].append(time.perf_counter() - t)
        return lat

    try:
        out.update(asyncio.run(run()))
    except Exception as exc:  # reported in the table; the rest of the run (and its report) still counts
        out["notes"].append(f"not measured: {type(exc).__name__}: {exc}"[:300])
    return out


def render(result: dict) -> str:
    t = result["tiers"]
    v = t["validator"]
    lines = [
        f"Profile `{result['profile']}` ({result['scout']} -> {result['validator']}), {result['prompts']}, "
        f"{t['scout']['n']} requests per row, greedy, max_tokens={result['max_tokens']}, sequential.",
        "",
        "| path | p50 ms | p99 ms | tokens/s (median) | p50 vs validator | tokens/s vs validator |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("scout", "validator", "auto"):
        r = t[name]
        lines.append(
            f"| {name} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['tokens_per_s']:.1f} | "
            f"{r['p50_ms'] / v['p50_ms']:.2f}x | {r['tokens_per_s'] / max(v['tokens_per_s'], 1e-9):.2f}x |"
        )
    mix = ", ".join(f"{k}: {c}" for k, c in sorted(result["auto_route_mix"].items()))
    lines += ["", f"Route mix of `auto`: {mix}.", "",
              f"Ray Serve hops, max_tokens=1, {result['hops']['n']} requests each ({result['scout']} engine):", "",
              "| path | p50 ms | p99 ms | added p50 ms | added p99 ms |", "|---|---:|---:|---:|---:|"]
    h = result["hops"]
    # With the analyzer on, the Ingress plans every request (also model=scout) before the engine call.
    ingress = "Ingress -> analyzer -> LLMServer" if result.get("analyzer_on") else "Ingress -> LLMServer"
    order = [("engine in-process (vllm.LLM)", "direct", None),
             ("DeploymentHandle -> LLMServer", "handle", "direct"),
             (f"HTTP -> proxy -> {ingress}", "http", "handle")]
    lines += latency_rows(h, order)
    if "paths" in result:
        lines += ["", render_paths(result)]
    if "analyzer_hop" in result:
        lines += ["", render_analyzer(result["analyzer_hop"])]
    return "\n".join(lines)


def latency_rows(h: dict, order: list[tuple[str, str, str | None]]) -> list[str]:
    """Rows of `| label | p50 | p99 | added p50 | added p99 |`, each added over the row it names."""
    lines = []
    for label, key, prev in order:
        if key not in h:
            lines.append(f"| {label} | not measured | | | |")
            continue
        p50, p99 = pct(h[key], 50) * 1000, pct(h[key], 99) * 1000
        if prev and prev in h:
            add50, add99 = p50 - pct(h[prev], 50) * 1000, p99 - pct(h[prev], 99) * 1000
            lines.append(f"| {label} | {p50:.1f} | {p99:.1f} | {add50:+.1f} | {add99:+.1f} |")
        else:
            lines.append(f"| {label} | {p50:.1f} | {p99:.1f} | | |")
    return lines


def render_paths(result: dict) -> str:
    deps = ", ".join(result["deployments"])
    lines = [f"Ray handle calls per request path (counted from the code for this app: {deps}; analyzer "
             f"{'on' if result['analyzer_on'] else 'off'}, cache {'on' if result['cache_on'] else 'off'}). "
             "All in series; an HTTP request adds proxy -> Ingress first; (opt.) = not always made; "
             "engine calls named for chat requests (a text completion calls .completions).", "",
             "| path | handle calls | with the HTTP hop | calls, in order |", "|---|---:|---:|---|"]
    for name, calls in result["paths"].items():
        n = hop_count([(c, o) for c, o in calls])
        with_http = "-".join(str(int(x) + 1) for x in n.split("-"))
        order = "; ".join(c + (" (opt.)" if o else "") for c, o in calls)
        lines.append(f"| {name} | {n} | {with_http} | {order} |")
    return "\n".join(lines)


def render_analyzer(a: dict) -> str:
    lines = [f"The analyzer hop: planning one request ({a['n']} each, interleaved, from the driver):", "",
             "| path | p50 ms | p99 ms | added p50 ms | added p99 ms |", "|---|---:|---:|---:|---:|"]
    lines += latency_rows(a, [
        ("Embedder handle (embed the question)", "embedder", None),
        ("analyzer plan: Ingress-side (in-process RequestAnalyzer -> Embedder handle)", "ingress_side", "embedder"),
        ("RequestAnalyzer handle (-> Embedder handle)", "handle", "ingress_side"),
    ])
    after = [f"Note: {note}." for note in a.get("notes", [])]
    if "handle" in a and "ingress_side" in a:
        saved = (pct(a["handle"], 50) - pct(a["ingress_side"], 50)) * 1000
        after.append(f"The RequestAnalyzer hop costs {saved:+.1f} ms at p50 over planning in the Ingress.")
    return "\n".join(lines + (["", *after] if after else []))


def pyplot():
    """matplotlib's pyplot drawing to files, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(result: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    names = ["scout", "validator", "auto"]
    ax[0].bar(names, [result["tiers"][n]["p50_ms"] for n in names], label="p50")
    ax[0].scatter(names, [result["tiers"][n]["p99_ms"] for n in names], color="black", label="p99", zorder=3)
    ax[0].set_ylabel("latency (ms)")
    ax[0].set_title(f"Tiers ({result['profile']}, max_tokens={result['max_tokens']})")
    ax[0].legend()
    hops = result["hops"]
    keys = [k for k in ("direct", "handle", "http") if k in hops]
    ax[1].boxplot([[x * 1000 for x in hops[k]] for k in keys], tick_labels=keys)
    ax[1].set_ylabel("latency (ms), max_tokens=1")
    ax[1].set_title("Ray Serve hops")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--requests", type=int, default=12, help="prompts per tier row")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hops", type=int, default=30, help="requests per hop row")
    ap.add_argument("--port", type=int, default=8017)
    ap.add_argument("--out", default=str(REPO / "reports"))
    ap.add_argument("--with-cache", action="store_true",
                    help="keep the profile's semantic cache on (tier and hop requests bypass it)")
    args = ap.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app
    from serving.config import load_profile

    config = load_profile(args.profile)
    if not args.with_cache:
        # Tiers and hops are measured without the cache by default (repeated prompts would be
        # cache hits); scripts/bench_cache.py measures the cache.
        config.cache.enabled = False
    bypass = BYPASS if config.cache.enabled else None
    ps, source = prompts(args.requests)
    result: dict = {"profile": config.profile, "scout": config.scout.served_name(),
                    "validator": config.validator.served_name(), "prompts": source, "max_tokens": args.max_tokens,
                    "hops": {"n": args.hops}, "analyzer_on": config.analyzer.enabled,
                    "cache_on": config.cache.enabled}
    print(f"analyzer {'on' if config.analyzer.enabled else 'off'}, cache {'on' if config.cache.enabled else 'off'}",
          flush=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        t0 = time.perf_counter()
        serve.run(build_app(config.model_dump(mode="json")), name="infopt", route_prefix="/")
        print(f"deployed in {time.perf_counter() - t0:.0f} s", flush=True)
        base = f"http://127.0.0.1:{args.port}"
        deployments = set(serve.status().applications["infopt"].deployments)
        result["deployments"] = sorted(deployments)
        result["paths"] = hop_paths(deployments, config.analyzer.enabled, config.cache.enabled,
                                    config.tiering.verified_escalation, config.cache.draft_threshold is not None)
        print(render_paths(result), flush=True)
        bench_tiers(base, ps[:2], 8, bypass)  # warm-up both engines
        result["tiers"], result["auto_route_mix"] = bench_tiers(base, ps, args.max_tokens, bypass)
        print("tiers done", flush=True)
        bench_http(base, "scout", 3, bypass)
        result["hops"]["http"] = bench_http(base, "scout", args.hops, bypass)
        result["hops"]["handle"] = bench_handle("Scout", config.scout.served_name(), args.hops)
        result["analyzer_hop"] = bench_analyzer(config, deployments, args.hops)
        print(render_analyzer(result["analyzer_hop"]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    if config.scout.device == "cpu":
        result["hops"]["direct"] = bench_direct(config.resolve_model(config.scout.model), config.scout, args.hops)
    table = render(result)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_tiers.json").write_text(json.dumps(result, indent=2))
    (out / "bench_tiers.md").write_text(table + "\n")
    if plot(result, out / "bench_tiers.png"):
        print(f"\nplot: {out / 'bench_tiers.png'}")
    print(f"report: {out / 'bench_tiers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
