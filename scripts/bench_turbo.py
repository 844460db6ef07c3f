"""The Turbo, measured side by side in one run: verified escalation, near-miss drafts, speculative decoding.

    python scripts/bench_turbo.py --profile tiny [--requests 12] [--max-tokens 48]
                                  [--spec-profile laptop] [--spec-requests 4] [--spec-max-tokens 32]

1. **Verified escalation** (the profile's app on Ray Serve, cache bypassed): for each prompt
   the Validator alone (`model=validator`) and an escalation forced by
   `confidence_threshold=1.0`, in which the Validator verifies the Scout's draft. Reported:
   the Validator stage's time verified vs plain (the same prompt, the same engine), the
   escalated path end to end (Scout + verification vs Scout + plain generation, the Scout's
   time taken from the same request), and the distribution of the accepted fraction.
   Outputs are compared: greedy verified answers must equal the Validator's own.
2. **Near-miss drafts** (same app, cache on, a fresh store): QQP duplicate pairs whose
   similarity (the real embedder) lies between `cache.draft_threshold` and
   `cache.similarity_threshold`: the first question is answered and admitted, the second
   is a near miss the Validator verifies; compared with the Validator answering the second
   question alone.
3. **Speculative decoding** (after Serve is shut down; the `--spec-profile` Validator in
   vLLM in-process, built from the same engine config as the deployment): greedy
   generation with speculation off, on (`validator.speculative`, draft model = the Scout's
   when the profile names none), and on without the concurrency limit, at concurrency 1
   (one request at a time) and 8 (eight submitted together: vLLM batches them). Tokens/s
   ratios vs off, vLLM's acceptance counters, and whether outputs matched.

Prints the tables and writes reports/bench_turbo.{json,md} plus a PNG plot. Absolute times
on a shared 2-core machine are noise; the ratios, measured side by side, are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_tiers import pct, prompts, pyplot  # noqa: E402

DATA = REPO.parent / "shared" / "data"


# -- 1. verified escalation ------------------------------------------------------------------


def _chat(c, prompt: str, max_tokens: int, **extra) -> dict:
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}], "temperature": 0,
                                             "max_tokens": max_tokens, "cache": {"mode": "bypass"}, **extra})
    r.raise_for_status()
    return r.json()


def _stage(body: dict, name: str) -> dict:
    return next(s for s in body["route"]["stages"] if s["stage"] == name)


def bench_escalation(base: str, ps: list[str], max_tokens: int) -> dict:
    import httpx

    rows = []
    with httpx.Client(base_url=base, timeout=900) as c:
        for p in ps:
            t = time.perf_counter()
            alone = _chat(c, p, max_tokens, model="validator")
            plain_ms = (time.perf_counter() - t) * 1000
            esc = _chat(c, p, max_tokens, model="auto", confidence_threshold=1.0)
            v, s = _stage(esc, "validator"), _stage(esc, "scout")
            if v["decision"] != "verified":
                raise RuntimeError(f"expected a verified escalation, got {esc['route']}")
            d = v["detail"]
            rows.append({
                "plain_validator_ms": _stage(alone, "validator")["latency_ms"], "plain_e2e_ms": plain_ms,
                "verified_validator_ms": v["latency_ms"], "scout_ms": s["latency_ms"],
                "proposed": d["draft_tokens"], "accepted": d["accepted_tokens"], "saved": d["saved_tokens"],
                "tokens": d["tokens"],
                "identical": esc["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"],
            })
    return {"rows": rows}


# -- 2. near-miss drafts ---------------------------------------------------------------------


def near_miss_pairs(config, n: int) -> list[tuple[str, str, float]]:
    """QQP duplicate pairs whose similarity falls in [draft_threshold, similarity_threshold)."""
    path = DATA / "qqp" / "qqp_dev.tsv"
    if not path.exists():
        return []
    from sentence_transformers import SentenceTransformer

    lo, hi = config.cache.draft_threshold, config.cache.similarity_threshold
    pairs = []
    with path.open() as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) == 6 and row[5] == "1" and len(row[3]) < 120 and len(row[4]) < 120:
                pairs.append((row[3], row[4]))
            if len(pairs) >= 400:
                break
    model = SentenceTransformer(config.resolve_model(config.cache.embedder.model), device="cpu")
    a = model.encode([p[0] for p in pairs], normalize_embeddings=True)
    b = model.encode([p[1] for p in pairs], normalize_embeddings=True)
    out = []
    for (q1, q2), x, y in zip(pairs, a, b, strict=True):
        sim = float((x * y).sum())
        if lo <= sim < hi:
            out.append((q1, q2, sim))
        if len(out) >= n:
            break
    return out


def bench_near_miss(base: str, pairs: list[tuple[str, str, float]], max_tokens: int) -> dict:
    import httpx

    rows = []
    with httpx.Client(base_url=base, timeout=900) as c:
        for i, (q1, q2, sim) in enumerate(pairs):
            ns = {"namespace": f"bench-turbo-{i}"}
            body = {"temperature": 0, "max_tokens": max_tokens}
            first = c.post("/v1/chat/completions", json={**body, "model": "validator", "cache": ns,
                                                         "messages": [{"role": "user", "content": q1}]}).json()
            if _stage(first, "admission")["decision"] != "admitted":
                continue  # e.g. cut by max_tokens: nothing cached, no near miss to measure
            near = c.post("/v1/chat/completions", json={**body, "model": "auto", "cache": ns,
                                                        "messages": [{"role": "user", "content": q2}]}).json()
            v = _stage(near, "validator") if any(s["stage"] == "validator" for s in near["route"]["stages"]) else None
            if v is None or v["decision"] != "verified":
                continue
            alone = _chat(c, q2, max_tokens, model="validator")
            rows.append({
                "similarity": sim, "plain_validator_ms": _stage(alone, "validator")["latency_ms"],
                "verified_validator_ms": v["latency_ms"], "proposed": v["detail"]["draft_tokens"],
                "accepted": v["detail"]["accepted_tokens"], "tokens": v["detail"]["tokens"],
                "identical": near["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"],
            })
    return {"rows": rows, "pairs_tried": len(pairs)}


# -- 3. speculative decoding -----------------------------------------------------------------


def bench_speculative(spec_profile: str, ps: list[str], max_tokens: int, dtype: str | None) -> dict:
    """vLLM in-process, one engine at a time: off, on, on without the concurrency limit."""
    from deployments.engines import llm_config_kwargs
    from serving.config import load_profile

    config = load_profile(spec_profile)
    engine = config.validator.model_copy(deep=True)
    if dtype:
        engine.dtype = dtype
    if engine.speculative.method == "none":
        engine.speculative.method = "draft_model"
    draft = config.resolve_model(config.draft_model(engine))
    modes = {"off": None, "on": engine.speculative.max_concurrency, "on, no limit": None}
    results: dict = {"profile": spec_profile, "validator": engine.served_name(), "dtype": engine.dtype,
                     "method": engine.speculative.method, "k": engine.speculative.num_speculative_tokens,
                     "max_concurrency": engine.speculative.max_concurrency, "modes": {}}
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(engine.kv_cache_space_gib)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0-1"  # alone on the machine now: both cores
    from vllm import LLM, SamplingParams

    msgs = [[{"role": "user", "content": p}] for p in ps]
    sp = SamplingParams(temperature=0, max_tokens=max_tokens)
    for name, limit in modes.items():
        e = engine.model_copy(deep=True)
        if name == "off":
            e.speculative.method = "none"
        e.speculative.max_concurrency = limit
        kw = llm_config_kwargs(e, config.resolve_model(e.model), draft)["engine_kwargs"]
        kw["max_num_seqs"] = max(kw.get("max_num_seqs", 8), 8)
        if "speculative_config" in kw and limit is not None:
            kw["speculative_config"] = e.speculative.vllm_config(kw["max_num_seqs"], draft)
        t = time.perf_counter()
        llm = LLM(model=config.resolve_model(e.model), disable_log_stats=False, **kw)
        start_s = time.perf_counter() - t
        llm.chat(msgs[:1], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
        before = _spec_counters(llm)
        seq_t, seq_tok, outs = [], [], []
        for m in msgs:
            t = time.perf_counter()
            o = llm.chat([m], sp, use_tqdm=False)[0].outputs[0]
            seq_t.append(time.perf_counter() - t)
            seq_tok.append(len(o.token_ids))
            outs.append(list(o.token_ids))
        mid = _spec_counters(llm)
        batch = (msgs * 8)[:8]
        t = time.perf_counter()
        bo = llm.chat(batch, sp, use_tqdm=False)
        batch_s = time.perf_counter() - t
        after = _spec_counters(llm)
        results["modes"][name] = {
            "start_s": start_s,
            "c1_tokens_per_s": sum(seq_tok) / sum(seq_t), "c1_p50_ms": pct(seq_t, 50) * 1000,
            "c8_tokens_per_s": sum(len(o.outputs[0].token_ids) for o in bo) / batch_s,
            "outputs": outs, "c1_spec": _diff(mid, before), "c8_spec": _diff(after, mid),
        }
        print(f"speculative {name}: {results['modes'][name]['c1_tokens_per_s']:.2f} tok/s at c=1, "
              f"{results['modes'][name]['c8_tokens_per_s']:.2f} at c=8", flush=True)
        del llm
        gc.collect()
    off = results["modes"]["off"]["outputs"]
    for name in ("on", "on, no limit"):
        results["modes"][name]["identical"] = sum(a == b for a, b in zip(results["modes"][name]["outputs"], off,
                                                                          strict=True))
    return results


def _spec_counters(llm) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in llm.get_metrics():
        if m.name in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                      "vllm:spec_decode_num_accepted_tokens"):
            out[m.name.split(":")[1]] = out.get(m.name.split(":")[1], 0) + float(getattr(m, "value", 0) or 0)
    return out


def _diff(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) - b.get(k, 0) for k in a}


class _Skip(Exception):
    """Part 1-2 not asked for."""


# -- report ----------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def render(result: dict) -> str:
    lines = []
    esc = result.get("escalation", {}).get("rows", [])
    if esc:
        vp = statistics.median(r["plain_validator_ms"] for r in esc)
        vv = statistics.median(r["verified_validator_ms"] for r in esc)
        ep = statistics.median(r["scout_ms"] + r["plain_validator_ms"] for r in esc)
        ev = statistics.median(r["scout_ms"] + r["verified_validator_ms"] for r in esc)
        frac = [r["accepted"] / r["proposed"] for r in esc if r["proposed"]]
        prop, acc = sum(r["proposed"] for r in esc), sum(r["accepted"] for r in esc)
        lines += [
            f"**Verified escalation**, profile `{result['profile']}` ({result['scout']} drafts, "
            f"{result['validator']} verifies), {len(esc)} escalated requests ({result['prompts']}), greedy, "
            f"max_tokens={result['max_tokens']}:", "",
            "| | plain Validator | verified | verified vs plain |", "|---|---:|---:|---:|",
            f"| Validator stage p50 ms | {vp:.0f} | {vv:.0f} | {_ratio(vv, vp)} |",
            f"| Validator stage p99 ms | {pct([r['plain_validator_ms'] for r in esc], 99):.0f} | "
            f"{pct([r['verified_validator_ms'] for r in esc], 99):.0f} | |",
            f"| escalated path (Scout + Validator) p50 ms | {ep:.0f} | {ev:.0f} | {_ratio(ev, ep)} |", "",
            f"Draft tokens accepted: {acc}/{prop} ({acc / max(prop, 1):.0%}); accepted fraction per request: "
            f"p10 {pct(frac, 10):.2f}, p50 {pct(frac, 50):.2f}, p90 {pct(frac, 90):.2f}; whole draft accepted in "
            f"{sum(f == 1.0 for f in frac)}/{len(frac)}. Verified answers identical to the Validator's own: "
            f"{sum(r['identical'] for r in esc)}/{len(esc)}.", ""]
    nm = result.get("near_miss", {})
    rows = nm.get("rows", [])
    if rows:
        vp = statistics.median(r["plain_validator_ms"] for r in rows)
        vv = statistics.median(r["verified_validator_ms"] for r in rows)
        prop, acc = sum(r["proposed"] for r in rows), sum(r["accepted"] for r in rows)
        lines += [
            f"**Near-miss drafts**: {len(rows)} QQP duplicate pairs with similarity in "
            f"[{result['draft_threshold']}, {result['similarity_threshold']}) (of {nm['pairs_tried']} tried): the "
            "second question verified against the first one's cached answer, vs the Validator alone.", "",
            "| | plain Validator | near miss verified | ratio |", "|---|---:|---:|---:|",
            f"| Validator stage p50 ms | {vp:.0f} | {vv:.0f} | {_ratio(vv, vp)} |", "",
            f"Cached-answer tokens accepted: {acc}/{prop} ({acc / max(prop, 1):.0%}); identical to the Validator "
            f"alone: {sum(r['identical'] for r in rows)}/{len(rows)}.", ""]
    elif "near_miss" in result:
        lines += [f"**Near-miss drafts**: not measured ({result['near_miss'].get('why', 'no pair verified')}).", ""]
    spec = result.get("speculative")
    if spec:
        m = spec["modes"]
        off = m["off"]
        lines += [
            f"**Speculative decoding**, profile `{spec['profile']}` Validator {spec['validator']} ({spec['dtype']}), "
            f"method {spec['method']} (draft = the Scout's model), k={spec['k']}, vLLM in-process, greedy, "
            f"max_tokens={result['spec_max_tokens']}:", "",
            "| mode | c=1 tokens/s | vs off | c=8 tokens/s | vs off | accepted/draft tokens (c=1) "
            "| c=1 outputs = off |",
            "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in m.items():
            s = r["c1_spec"]
            acc = (f"{s.get('spec_decode_num_accepted_tokens', 0):.0f}/{s.get('spec_decode_num_draft_tokens', 0):.0f}"
                   if s.get("spec_decode_num_draft_tokens") else "-")
            label = f"on (off above {spec['max_concurrency']} sequences)" if name == "on" else name
            same = "-" if name == "off" else f"{r['identical']}/{len(off['outputs'])}"
            c1 = _ratio(r["c1_tokens_per_s"], off["c1_tokens_per_s"])
            c8 = _ratio(r["c8_tokens_per_s"], off["c8_tokens_per_s"])
            lines.append(f"| {label} | {r['c1_tokens_per_s']:.2f} | {c1} | {r['c8_tokens_per_s']:.2f} | {c8} | "
                         f"{acc} | {same} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    esc = result.get("escalation", {}).get("rows", [])
    if esc:
        ax[0].hist([r["accepted"] / r["proposed"] for r in esc if r["proposed"]], bins=10, range=(0, 1))
        ax[0].set_xlabel("accepted fraction of the Scout's draft")
        ax[0].set_ylabel("requests")
        ax[0].set_title("Verified escalation: acceptance")
        ax[1].scatter([r["plain_validator_ms"] for r in esc], [r["verified_validator_ms"] for r in esc],
                      label="Scout drafts")
    rows = result.get("near_miss", {}).get("rows", [])
    if rows:
        ax[1].scatter([r["plain_validator_ms"] for r in rows], [r["verified_validator_ms"] for r in rows],
                      marker="x", label="near-miss drafts")
    lim = max([r["plain_validator_ms"] for r in esc + rows] + [1])
    ax[1].plot([0, lim], [0, lim], color="grey", lw=1)
    ax[1].set_xlabel("Validator alone (ms)")
    ax[1].set_ylabel("Validator verifying a draft (ms)")
    ax[1].set_title("Per request: below the line = faster")
    ax[1].legend()
    spec = result.get("speculative")
    if spec:
        names = list(spec["modes"])
        x = range(len(names))
        ax[2].bar([i - 0.2 for i in x], [spec["modes"][n]["c1_tokens_per_s"] for n in names], 0.4, label="c=1")
        ax[2].bar([i + 0.2 for i in x], [spec["modes"][n]["c8_tokens_per_s"] for n in names], 0.4, label="c=8")
        ax[2].set_xticks(list(x), names)
        ax[2].set_ylabel("tokens/s")
        ax[2].set_title(f"Speculative decoding ({spec['profile']} Validator)")
        ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--requests", type=int, default=12, help="escalated prompts")
    ap.add_argument("--near-misses", type=int, default=8, help="near-miss pairs")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--spec-profile", default="laptop", help="whose Validator speculates ('' to skip)")
    ap.add_argument("--spec-requests", type=int, default=4)
    ap.add_argument("--spec-max-tokens", type=int, default=32)
    ap.add_argument("--spec-dtype", default=None, help="override the Validator's dtype for part 3")
    ap.add_argument("--port", type=int, default=8019)
    ap.add_argument("--out", default=str(REPO / "reports"))
    ap.add_argument("--name", default="bench_turbo", help="file name of the report, json and plot")
    ap.add_argument("--parts", default="serve,speculative",
                    help="'serve' (verified escalation and near misses through Ray Serve), 'speculative', or both")
    args = ap.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app
    from serving.config import load_profile

    config = load_profile(args.profile)
    config.tiering.verified_escalation = True
    config.tiering.verify_min_acceptance = 0.0  # measure verification itself, every time
    # Escalations are forced here; the analyzer (which may skip the Scout) is measured on its own.
    config.analyzer.enabled = False
    config.cache.enabled = True
    config.cache.path = Path(tempfile.mkdtemp(prefix="bench-turbo-cache-"))
    ps, source = prompts(args.requests)
    result: dict = {"profile": config.profile, "scout": config.scout.served_name(),
                    "validator": config.validator.served_name(), "prompts": source, "max_tokens": args.max_tokens,
                    "draft_threshold": config.cache.draft_threshold,
                    "similarity_threshold": config.cache.similarity_threshold, "spec_max_tokens": args.spec_max_tokens}
    parts = set(args.parts.split(","))
    pairs = near_miss_pairs(config, args.near_misses) if config.cache.draft_threshold is not None and \
        args.near_misses > 0 and "serve" in parts else []
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if "serve" in parts:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        if "serve" not in parts:
            raise _Skip
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        t0 = time.perf_counter()
        serve.run(build_app(config.model_dump(mode="json")), name="infopt", route_prefix="/")
        print(f"deployed in {time.perf_counter() - t0:.0f} s", flush=True)
        base = f"http://127.0.0.1:{args.port}"
        bench_escalation(base, ps[:1], 8)  # warm-up
        result["escalation"] = bench_escalation(base, ps, args.max_tokens)
        print("escalation done", flush=True)
        if pairs:
            result["near_miss"] = bench_near_miss(base, pairs, args.max_tokens)
        else:
            result["near_miss"] = {"rows": [], "why": "no QQP data or no pair in the near-miss band"}
        print("near misses done", flush=True)
    except _Skip:
        pass
    finally:
        if "serve" in parts:
            serve.shutdown()
            ray.shutdown()
    if args.spec_profile and "speculative" in parts:
        sps, _ = prompts(args.spec_requests)
        result["speculative"] = bench_speculative(args.spec_profile, sps, args.spec_max_tokens, args.spec_dtype)
    table = render(result)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{args.name}.md").write_text(table + "\n")
    if plot(result, out / f"{args.name}.png"):
        print(f"\nplot: {out / f'{args.name}.png'}")
    print(f"report: {out / f'{args.name}.md'}")
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
