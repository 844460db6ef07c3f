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


def bench_tiers(base: str, ps: list[str], max_tokens: int) -> tuple[dict, dict]:
    import httpx

    out, mix = {}, {}
    with httpx.Client(base_url=base, timeout=900) as c:
        for model in ("scout", "validator", "auto"):
            lat, toks = [], []
            for p in ps:
                t = time.perf_counter()
                r = c.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": p}],
                    "temperature": 0, "max_tokens": max_tokens})
                lat.append(time.perf_counter() - t)
                r.raise_for_status()
                body = r.json()
                toks.append(body["usage"]["completion_tokens"])
                if model == "auto":
                    tier = body["route"]["tier"]
                    mix[tier] = mix.get(tier, 0) + 1
            out[model] = summarize(lat, toks)
    return out, mix


def bench_http(base: str, model: str, n: int) -> list[float]:
    import httpx

    lat = []
    with httpx.Client(base_url=base, timeout=300) as c:
        for _ in range(n):
            t = time.perf_counter()
            r = c.post("/v1/completions", json={"model": model, "prompt": HOP_PROMPT, "temperature": 0,
                                                "max_tokens": 1})
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
    order = [("engine in-process (vllm.LLM)", "direct", None),
             ("DeploymentHandle -> LLMServer", "handle", "direct"),
             ("HTTP -> proxy -> Ingress -> LLMServer", "http", "handle")]
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
    return "\n".join(lines)


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
    args = ap.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app
    from serving.config import load_profile

    config = load_profile(args.profile)
    # Tiers and hops are measured without the cache (repeated prompts would be cache hits);
    # scripts/bench_cache.py measures the cache.
    config.cache.enabled = False
    ps, source = prompts(args.requests)
    result: dict = {"profile": config.profile, "scout": config.scout.served_name(),
                    "validator": config.validator.served_name(), "prompts": source, "max_tokens": args.max_tokens,
                    "hops": {"n": args.hops}}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        t0 = time.perf_counter()
        serve.run(build_app(config.model_dump(mode="json")), name="infopt", route_prefix="/")
        print(f"deployed in {time.perf_counter() - t0:.0f} s", flush=True)
        base = f"http://127.0.0.1:{args.port}"
        bench_tiers(base, ps[:2], 8)  # warm-up both engines
        result["tiers"], result["auto_route_mix"] = bench_tiers(base, ps, args.max_tokens)
        print("tiers done", flush=True)
        bench_http(base, "scout", 3)
        result["hops"]["http"] = bench_http(base, "scout", args.hops)
        result["hops"]["handle"] = bench_handle("Scout", config.scout.served_name(), args.hops)
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
