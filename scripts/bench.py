"""Validator-only vs tiered vs tiered + cache (+ verified escalation), one workload, one run.

    python scripts/bench.py --profile tiny        # or: make bench
    python scripts/bench.py --profile tiny --requests 24 --modes validator-only tiered

For each mode the service is started afresh (Ray Serve, the profile's AppConfig with the
mode's overrides, an empty cache, cold engines), warmed up with two requests outside the
workload, and sent the same workload (`scripts/workload.py`, same seed: ShareGPT, exact
repeats, QQP paraphrase pairs, GSM8K, MT-Bench sessions; greedy; half streamed) with
`--concurrency` requests in flight at most. Modes:

- `validator-only`: `tiering.enabled=false`, cache off: every request goes to the Validator.
- `tiered`: Scout first, escalate to the Validator when unsure; cache off.
- `tiered+cache`: the same with the semantic cache on.
- `tiered+cache+verified`: and `tiering.verified_escalation` (the Validator verifies the
  Scout's draft instead of regenerating it; non-streamed greedy requests).
- `tiered+calibrated` (when the profile has a calibration file, `infopt calibrate`): `tiered` with
  the Scout's answer kept only at the risk-controlled bound (issue 13's guarantee).
- `tiered+cache+verified+speculative`: and in-engine speculative decoding for the Validator
  (the profile's own `validator.speculative`, else n-gram lookup); every other mode has it off.

The workload is held out from calibration (`WorkloadSpec.held_out`): no prompt of the Scout's
calibration split and no QQP pair the cache's calibration reads (`--all-prompts` lifts that).

Measured per mode, printed as ratios to validator-only:
- Validator compute: CPU-seconds of the Validator replica's process tree (the Ray actor and
  the vLLM engine process it spawns; psutil, delta over the workload). It counts everything
  the Validator does for the workload, prefill and verification included, which generated
  tokens would miss. Also the Validator's busy seconds and generated tokens from the route
  traces (the only figures available for a remote or GPU Validator).
- p50/p99 end-to-end latency, TTFT p50 (streamed requests), throughput (requests/s).
- Route mix (the `route` object's tier) and fidelity: the share of answers identical to the
  validator-only answer of the same request (greedy), and the share *judged equivalent* to it
  (`Judge`: identical; GSM8K answers with the same final number; otherwise a cosine similarity
  of the two answers' all-MiniLM-L6-v2 embeddings of at least `--judge-threshold`, 0.9).
- On GPU profiles, Validator GPU-seconds: busy seconds x the GPUs of a replica (TP x PP).
- The Scout's kept answers in the guarantee's terms: how many (coverage), how many the judge finds
  disagreeing with validator-only, and the Clopper-Pearson upper limit (95%) of that rate; with
  the service's own ledger's Validator ratio (`GET /v1/ledger`).

Writes reports/bench_<profile>.json, the section between `<!-- bench.py:start -->` and
`<!-- bench.py:end -->` of docs/benchmarks.md (rows for every profile; profiles not run
are "not measured"; results of other profiles are kept), and docs/img/bench_<profile>_*.png.
Runs unchanged on CPU or GPU profiles. Absolute times on a shared machine are noise; the
ratios, measured side by side in one run, are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from workload import (  # noqa: E402
    DEFAULT_DATA_DIR,
    Record,
    StreamReader,
    WorkItem,
    WorkloadSpec,
    build,
    mix,
    read_whole,
    summarize,
)

from serving.answers import final_number  # noqa: E402

START, END = "<!-- bench.py:start -->", "<!-- bench.py:end -->"
RESULTS_RE = re.compile(r"<!-- bench\.py:results (.*?) -->", re.S)
BASELINE = "validator-only"
GPU_PROFILES = ("gpu-a100x4", "gpu-h100x8")
VALIDATOR_ACTOR = "ServeReplica:infopt:Validator"
WARMUP = [{"role": "user", "content": "Say hello in five words."}]


@dataclass
class Mode:
    """One configuration of the service: overrides merged into the profile's config."""

    key: str
    label: str
    overrides: dict[str, Any]


def base_modes() -> list[Mode]:
    off = {"enabled": False}
    # The benchmark caps max_tokens to fit a CPU budget, so most answers end by length; the cache
    # admits those only with admit_truncated (in real use answers complete and are admitted anyway).
    on = {"enabled": True, "admit_truncated": True}
    # The Scout's raw confidence decides in these modes, whatever calibration the profile names: the calibrated
    # decision is a mode of its own (`calibrated_mode`).
    raw = {"calibration": None}
    return [
        Mode(BASELINE, "Validator only (tiering off, cache off)",
             {"tiering": {"enabled": False, "verified_escalation": False}, "cache": off, "quality": raw}),
        Mode("tiered", "Scout first, Validator when its raw confidence is under the threshold; cache off",
             {"tiering": {"enabled": True, "verified_escalation": False}, "cache": off, "quality": raw}),
        Mode("tiered+cache", "+ semantic cache (admit_truncated: answers are cut by the small max_tokens)",
             {"tiering": {"enabled": True, "verified_escalation": False}, "cache": on, "quality": raw}),
        Mode("tiered+cache+verified", "+ verified escalation",
             {"tiering": {"enabled": True, "verified_escalation": True}, "cache": on, "quality": raw}),
    ]


SPECULATIVE_DEFAULT = {"method": "ngram"}  # needs no second model and suits any tokenizer


def calibrated_mode(profile: str | None, base_args: dict[str, Any] | None = None,
                    calibration: str | None = None) -> Mode | None:
    """`tiered` under a calibration (`infopt calibrate`): `calibration` when given, else the profile's own
    `quality.calibration`, else cluster/calibration/<profile>.json; a Scout answer is kept only at the
    risk-controlled bound. None when that file does not exist."""
    from serving.config import profiles_dir

    named = calibration or ((base_args or {}).get("quality") or {}).get("calibration")
    relative = str(named) if named else f"calibration/{profile}.json"
    path = Path(relative) if Path(relative).is_absolute() else profiles_dir() / relative
    if profile is None or not path.exists():
        return None
    return Mode("tiered+calibrated", f"Scout first, its answer kept only at the calibrated bound ({relative}); "
                "cache off", {"tiering": {"enabled": True, "verified_escalation": False}, "cache": {"enabled": False},
                              "quality": {"calibration": relative}})


def all_modes(base_args: dict[str, Any] | None = None, profile: str | None = None,
              calibration: str | None = None) -> list[Mode]:
    """The modes to compare: every mode but the last turns speculation off (so each mode measures one
    thing) and the last one turns it on: the profile's own `validator.speculative` when it sets a
    method, else n-gram lookup. With a calibration file for `profile`, `tiered+calibrated` comes before it.
    """
    modes = base_modes()
    calibrated = calibrated_mode(profile, base_args, calibration)
    if calibrated is not None:
        modes.append(calibrated)
    off = {"validator": {"speculative": {"method": "none"}}}
    for m in modes:
        m.overrides = merge(m.overrides, off)
    own = ((base_args or {}).get("validator") or {}).get("speculative") or {}
    spec = own if own.get("method", "none") != "none" else SPECULATIVE_DEFAULT
    verified = next(m for m in modes if m.key == "tiered+cache+verified")
    modes.append(Mode("tiered+cache+verified+speculative", f"+ speculative decoding ({spec['method']})",
                      merge(verified.overrides, {"validator": {"speculative": dict(spec)}})))
    return modes


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` into a copy of `base`."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# -- the Validator's compute ------------------------------------------------------------


class CpuProbe:
    """CPU-seconds (user + system) used by a set of processes and their descendants between two reads."""

    def __init__(self, find: Callable[[], list[int]]):
        self.find = find
        self.before: dict[int, float] = {}

    @staticmethod
    def by_cmdline(needle: str) -> Callable[[], list[int]]:
        """Processes whose command line (Ray's process title) contains `needle`."""

        def find() -> list[int]:
            import psutil

            out = []
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(p.info.get("cmdline") or [])
                if needle in cmd:
                    out.append(p.info["pid"])
            return out

        return find

    def _read(self) -> dict[int, float]:
        import psutil

        seen: dict[int, float] = {}
        for pid in self.find():
            try:
                root = psutil.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    t = p.cpu_times()
                    seen[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        return seen

    def start(self) -> int:
        self.before = self._read()
        return len(self.before)

    def stop(self) -> float:
        after = self._read()
        return sum(v - self.before.get(pid, 0.0) for pid, v in after.items())


# -- driving the workload ---------------------------------------------------------------


async def send(client: Any, item: WorkItem, model: str, rec: Record) -> Record:
    """Send one request with httpx (async) and measure it the way the locustfile does."""
    body = item.body(model)
    t0 = time.perf_counter()
    if not item.stream:
        r = await client.post("/v1/chat/completions", json=body)
        try:
            data = r.json()
        except ValueError:
            data = {"error": {"message": r.text[:200]}}
        return read_whole(rec, r.status_code, data, time.perf_counter() - t0, r.headers.get("x-infopt-route"))
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        rec.status, rec.headers_s = r.status_code, time.perf_counter() - t0
        reader = StreamReader(rec, t0)
        if r.status_code != 200:
            rec.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
        else:
            async for line in r.aiter_lines():
                if line:
                    reader.line(line)
        reader.close()
        if rec.tier is None:
            rec.tier = r.headers.get("x-infopt-route")
    return rec


async def drive(base_url: str, items: list[WorkItem], concurrency: int, model: str = "auto",
                timeout_s: float = 900.0) -> tuple[list[Record], float]:
    """Send `items` at their arrival times, at most `concurrency` at once; return the records and the wall time."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def one(client: httpx.AsyncClient, item: WorkItem) -> Record:
        delay = start + item.at_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with sem:
            rec = Record(item.id, item.kind, item.stream, lag_s=max(0.0, time.perf_counter() - start - item.at_s))
            rec.sent_at_s = time.perf_counter() - start
            try:
                return await send(client, item, model, rec)
            except Exception as exc:  # a failed request is a result, not the end of the benchmark
                rec.error = f"{type(exc).__name__}: {exc}"
                rec.e2e_s = time.perf_counter() - start - rec.sent_at_s
                return rec

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        records = await asyncio.gather(*(one(client, it) for it in items))
    return list(records), time.perf_counter() - start


def measure(base_url: str, items: list[WorkItem], concurrency: int, probe: CpuProbe | None = None,
            model: str = "auto") -> dict[str, Any]:
    """Run the workload against a running service: summary, records and the Validator's CPU-seconds."""
    idle_rate = None
    if probe is not None and not probe.start():
        print("  (no Validator process found on this machine: Validator CPU-s not measured)", flush=True)
    elif probe is not None:
        time.sleep(2.0)  # what the idle replica burns (polling threads): reported, not subtracted
        idle_rate = probe.stop() / 2.0
        probe.start()
    records, wall = asyncio.run(drive(base_url, items, concurrency, model))
    cpu = probe.stop() if probe is not None and probe.before else None
    out = summarize(records, wall)
    out["validator_cpu_s"] = cpu
    out["validator_idle_cpu_per_s"] = idle_rate
    out["validator_net_cpu_s"] = net_cpu(out)
    out["ledger"] = ledger(base_url)
    out["records"] = [r.to_dict() for r in records]
    return out


def ledger(base_url: str) -> dict[str, Any] | None:
    """The service's own cost ledger after the run (`GET /v1/ledger`): what it says it saved."""
    import httpx

    try:
        r = httpx.get(f"{base_url}/v1/ledger", timeout=30, headers=_admin_headers())
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def _admin_headers() -> dict[str, str]:
    key = os.environ.get("INFOPT_CACHE__ADMIN_KEY")
    return {"authorization": f"Bearer {key}"} if key else {}


# -- comparison ---------------------------------------------------------------------------


JUDGE_THRESHOLD = 0.9
class Judge:
    """Whether an answer says what the validator-only answer to the same request says.

    Identical text is equivalent. A GSM8K answer is equivalent when its final number is the
    baseline's (the usual GSM8K check; a truncated answer is judged by the last figure it
    reached). Any other answer is equivalent when the cosine similarity of the two answers'
    sentence embeddings (all-MiniLM-L6-v2, the cache's embedder: the same meaning in other
    words) is at least `threshold`. A cheap, reproducible judge, not an LLM judge: it reads
    "says the same", not "is as good".
    """

    def __init__(self, embed: Callable[[list[str]], list[list[float]]] | None, threshold: float = JUDGE_THRESHOLD):
        self.embed, self.threshold = embed, threshold

    @classmethod
    def from_model(cls, path: str, threshold: float = JUDGE_THRESHOLD) -> Judge:
        from serving.cache.embedder import SentenceTransformerEmbedder

        model = SentenceTransformerEmbedder(path, device="cpu")
        return cls(model.embed_sync, threshold)

    def __call__(self, pairs: list[tuple[str, str, str]]) -> list[tuple[bool, float | None]]:
        """(kind, answer, baseline answer) -> (equivalent, similarity or None when not embedded)."""
        out: list[tuple[bool, float | None]] = [(a == b, 1.0 if a == b else None) for _, a, b in pairs]
        todo = []
        for i, (kind, a, b) in enumerate(pairs):
            if a == b:
                continue
            na, nb = final_number(a), final_number(b)
            if kind == "gsm8k" and na is not None and nb is not None:
                out[i] = (na == nb, None)
            else:
                todo.append(i)
        if todo and self.embed is not None:
            import numpy as np

            vectors = np.asarray(self.embed([t for i in todo for t in pairs[i][1:]]), dtype=np.float64)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            sims = (vectors[0::2] * vectors[1::2]).sum(axis=1)  # cosine of each (answer, baseline) pair
            for i, sim in zip(todo, sims.tolist(), strict=True):
                out[i] = (sim >= self.threshold, sim)
        return out


def fidelity(records: list[dict[str, Any]], baseline: list[dict[str, Any]],
             judge: Judge | None = None) -> dict[str, Any]:
    """Share of answers identical to (and judged equivalent to) the baseline's answer to the same request."""
    base = {r["id"]: r for r in baseline if r["ok"]}
    pairs = [(r, base[r["id"]]) for r in records if r["ok"] and r["id"] in base]
    verdicts = (judge or Judge(None))([(r["kind"], r["text"], b["text"]) for r, b in pairs])
    same = equivalent = 0
    sims: list[float] = []
    by_tier: dict[str, list[int]] = {}
    for (r, b), (ok, sim) in zip(pairs, verdicts, strict=True):
        hit = r["text"] == b["text"]
        same += hit
        equivalent += ok
        if sim is not None:
            sims.append(sim)
        t = by_tier.setdefault(r.get("tier") or "unknown", [0, 0, 0])
        t[0] += hit
        t[1] += ok
        t[2] += 1
    total = len(pairs)
    return {"identical": same, "equivalent": equivalent, "compared": total,
            "share": same / total if total else math.nan,
            "equivalent_share": equivalent / total if total and judge is not None else math.nan,
            "similarity_mean": sum(sims) / len(sims) if sims else math.nan,
            "judge": f"cosine >= {judge.threshold:g} (all-MiniLM-L6-v2), GSM8K final number" if judge else None,
            "by_tier": {k: {"identical": v[0], "equivalent": v[1], "compared": v[2]} for k, v in by_tier.items()}}


def scout_served(fid: dict[str, Any], requests: int, delta: float = 0.05) -> dict[str, Any]:
    """The Scout's kept answers judged against validator-only: how many, how many disagree, and the
    Clopper-Pearson upper limit (confidence 1 - `delta`) of their disagreement rate: the guarantee's own terms."""
    from serving.quality.risk import clopper_pearson_upper

    got = fid["by_tier"].get("scout") or {"equivalent": 0, "compared": 0}
    n, bad = got["compared"], got["compared"] - got["equivalent"]
    return {"served": n, "coverage": n / requests if requests else math.nan, "disagreements": bad,
            "rate": bad / n if n else math.nan, "upper": clopper_pearson_upper(bad, n, delta), "delta": delta}


def net_cpu(res: dict[str, Any]) -> float | None:
    """The Validator's CPU-seconds above what it burns idle over the same wall time (never below 0)."""
    cpu, idle = res.get("validator_cpu_s"), res.get("validator_idle_cpu_per_s")
    if cpu is None or idle is None:
        return None
    return max(0.0, cpu - idle * res["wall_s"])


def ratio(x: float | None, base: float | None) -> float:
    if x is None or base is None or not math.isfinite(x) or not math.isfinite(base) or base == 0:
        return math.nan
    return x / base


def gpu_seconds(res: dict[str, Any]) -> float | None:
    """The Validator's GPU-seconds: its busy seconds x the GPUs one replica holds (None on CPU)."""
    gpus = res.get("validator_gpus") or 0
    return res["validator_busy_s"] * gpus if gpus else None


def compare(results: dict[str, dict[str, Any]], baseline: str = BASELINE,
            judge: Judge | None = None) -> list[dict[str, Any]]:
    """One row per mode: absolute figures, ratios to `baseline`, route mix and fidelity."""
    base = results[baseline]
    rows = []
    for key, res in results.items():
        fid = fidelity(res["records"], base["records"], judge)
        rows.append({
            "mode": key, "label": res.get("label", key), "requests": res["requests"], "ok": res["ok"],
            "errors": res["errors"], "route_mix": res["route_mix"],
            "validator_cpu_s": res.get("validator_cpu_s"), "validator_net_cpu_s": net_cpu(res),
            "validator_idle_cpu_per_s": res.get("validator_idle_cpu_per_s"),
            "validator_busy_s": res["validator_busy_s"],
            "validator_tokens": res["validator_tokens"], "p50_s": res["p50_s"], "p99_s": res["p99_s"],
            "ttft_p50_s": res["ttft_p50_s"], "throughput_rps": res["throughput_rps"],
            "validator_gpu_s": gpu_seconds(res),
            # The ledger's own figure: Validator seconds spent / what the Validator alone would have spent.
            "ledger_validator_ratio": (res.get("ledger") or {}).get("validator_ratio"),
            "fidelity": fid["share"], "equivalent": fid["equivalent_share"], "fidelity_detail": fid,
            "scout": scout_served(fid, res["requests"]) if judge is not None else None,
            "x": {
                "validator_cpu_s": ratio(res.get("validator_cpu_s"), base.get("validator_cpu_s")),
                "validator_net_cpu_s": ratio(net_cpu(res), net_cpu(base)),
                "validator_busy_s": ratio(res["validator_busy_s"], base["validator_busy_s"]),
                "validator_gpu_s": ratio(gpu_seconds(res), gpu_seconds(base)),
                "validator_tokens": ratio(res["validator_tokens"], base["validator_tokens"]),
                "p50_s": ratio(res["p50_s"], base["p50_s"]),
                "p99_s": ratio(res["p99_s"], base["p99_s"]),
                "ttft_p50_s": ratio(res["ttft_p50_s"], base["ttft_p50_s"]),
                "throughput_rps": ratio(res["throughput_rps"], base["throughput_rps"]),
            },
        })
    return rows


def _x(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}x"


def _s(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else (f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}")


def mix_text(m: dict[str, int]) -> str:
    order = ["cache", "scout", "validator"]
    keys = [k for k in order if k in m] + sorted(k for k in m if k not in order)
    return " / ".join(f"{k} {m[k]}" for k in keys)


def table(rows: list[dict[str, Any]]) -> str:
    """The ratio table (vs validator-only) with the absolute figures beside it."""
    gpu = any(r.get("validator_gpu_s") for r in rows)
    lines = [
        "| mode | Validator CPU-s above idle | Validator CPU-s | Validator busy-s "
        + ("| Validator GPU-s " if gpu else "") + "| Validator tokens | p50 latency "
        "| p99 latency | TTFT p50 | throughput | route mix (cache / scout / validator) | identical to validator-only "
        "| judged equivalent |",
        "|---|---:|---:|---:|" + ("---:|" if gpu else "") + "---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        x = r["x"]
        fid = r["fidelity_detail"]
        same = f"{fid['identical']}/{fid['compared']} ({_pct(fid['share'])})" if fid["compared"] else "n/a"
        judged = (f"{fid['equivalent']}/{fid['compared']} ({_pct(fid['equivalent_share'])})"
                  if fid["compared"] and math.isfinite(fid.get("equivalent_share", math.nan)) else "n/a")
        errors = f", {r['errors']} errors" if r["errors"] else ""
        gpu_cell = f"| {_x(x.get('validator_gpu_s'))} ({_s(r.get('validator_gpu_s'))} s) " if gpu else ""
        lines.append(
            f"| {r['mode']} | {_x(x.get('validator_net_cpu_s'))} ({_s(r.get('validator_net_cpu_s'))} s) "
            f"| {_x(x['validator_cpu_s'])} ({_s(r['validator_cpu_s'])} s) "
            f"| {_x(x['validator_busy_s'])} ({_s(r['validator_busy_s'])} s) {gpu_cell}"
            f"| {_x(x['validator_tokens'])} ({r['validator_tokens']}) "
            f"| {_x(x['p50_s'])} ({_s(r['p50_s'])} s) | {_x(x['p99_s'])} ({_s(r['p99_s'])} s) "
            f"| {_x(x['ttft_p50_s'])} ({_s(r['ttft_p50_s'])} s) "
            f"| {_x(x['throughput_rps'])} ({r['throughput_rps']:.3f}/s) "
            f"| {mix_text(r['route_mix'])}{errors} | {same} | {judged} |")
    return "\n".join(lines)


def scout_table(rows: list[dict[str, Any]]) -> str:
    """The Scout's kept answers per mode, judged against validator-only, in the guarantee's terms."""
    rows = [r for r in rows if r["mode"] != BASELINE and r.get("scout")]
    if not rows:
        return ""
    lines = ["Scout-served answers, judged against validator-only (the guarantee's terms: ε = 1%, upper limit "
             "at 95%):", "",
             "| mode | Scout served (coverage) | judged disagreeing | disagreement | upper limit | "
             "Validator tokens | the ledger's Validator ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sc = r["scout"]
        lines.append(f"| {r['mode']} | {sc['served']} ({_pct(sc['coverage'])}) | {sc['disagreements']} "
                     f"| {_pct1(sc['rate'])} | {_pct1(sc['upper'])} | {_x(r['x']['validator_tokens'])} "
                     f"| {_s(r.get('ledger_validator_ratio'))} |")
    return "\n".join(lines)


def profile_detail(run: dict[str, Any], img_rel: str) -> str:
    """One profile's subsection: context, the table, the modes, read-off sentences and the plots."""
    p = run["profile"]
    lines = [
        f"### Profile `{p}` ({run['scout']} -> {run['validator']}), {run['date']}",
        "",
        f"Machine: {run['machine']}. Code: {run.get('code', 'unknown')}. Workload: {run['workload_text']}. "
        f"Wall time of the benchmark: {run['bench_wall_s'] / 60:.1f} min.",
        "",
        table(run["rows"]),
        "",
    ]
    scout = scout_table(run["rows"])
    if scout:
        lines += [scout, ""]
    labels = run.get("mode_labels") or {}
    if labels:
        lines += ["Modes: " + "; ".join(f"`{k}` {v}" for k, v in labels.items()) + ".", ""]
    lines += highlights(run["rows"])
    for key, why in (run.get("failed_modes") or {}).items():
        lines.append(f"- `{key}`: not measured, the service did not start ({why}).")
    if run.get("notes"):
        lines += ["", "Reading (by hand, for this run):", "", run["notes"].strip()]
    lines += ["", f"![latency CDFs]({img_rel}/bench_{p}_latency.png)",
              f"![route mix]({img_rel}/bench_{p}_routes.png)",
              f"![savings]({img_rel}/bench_{p}_savings.png)"]
    return "\n".join(lines)


def profile_summary(run: dict[str, Any], img_rel: str) -> dict[str, Any]:
    """What the docs keep per profile across runs: the ratio rows, the run's context, its subsection."""
    keep = ("mode", "route_mix", "fidelity", "equivalent", "x", "errors", "requests", "scout")
    return {"date": run["date"], "machine": run["machine"], "workload": run["workload_text"],
            "rows": [{k: r.get(k) for k in keep} for r in run["rows"]], "detail": profile_detail(run, img_rel)}


def render_section(run: dict[str, Any], kept: dict[str, Any], profiles: list[str], img_rel: str) -> str:
    """The markdown between the markers: each measured profile in full, then all profiles' ratios.

    `kept` holds earlier runs of other profiles (from the previous section); this run replaces its own.
    """
    kept = {**kept, run["profile"]: profile_summary(run, img_rel)}
    lines = [
        START,
        "## Side by side: validator-only, tiered, cache, verified escalation (`scripts/bench.py`)",
        "",
        "Generated by `python scripts/bench.py` (`make bench`); re-running it replaces this section "
        "(results of other profiles are kept). Each mode starts the service afresh (cold engines, empty "
        "cache) and gets the same workload, same seed. Ratios are to validator-only; absolute values "
        "in brackets. Validator CPU-s: CPU time of the Validator replica's processes (Ray actor + vLLM "
        "engine) over the workload; above idle: minus what the idle replica burns over the same wall time "
        "(measured for 2 s before each workload; vLLM's and Ray's polling threads); busy-s: the Validator "
        "stages' wall time summed over requests "
        "(route traces); GPU-s (GPU profiles): busy-s x the GPUs of a replica; tokens: tokens the Validator "
        "generated. Identical: same text as the validator-only answer to the same request (greedy); judged "
        "equivalent: identical, or the same final number (GSM8K), or all-MiniLM-L6-v2 cosine similarity of "
        "the two answers >= 0.9 (same meaning in other words; not a judgement of quality).",
        "",
    ]
    for prof in profiles:
        if kept.get(prof, {}).get("detail"):
            lines += [kept[prof]["detail"], ""]
    lines += ["### All profiles (ratios to validator-only)", "",
              "| profile | mode | Validator CPU-s above idle | Validator busy-s | p50 | p99 | TTFT p50 | throughput "
              "| identical | judged equivalent | measured |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for prof in profiles:
        got = kept.get(prof)
        if not got:
            lines.append(f"| `{prof}` | all | not measured | | | | | | | | not measured |")
            continue
        for r in got["rows"]:
            x = r["x"]
            lines.append(f"| `{prof}` | {r['mode']} | {_x(x.get('validator_net_cpu_s'))} | {_x(x['validator_busy_s'])} "
                         f"| {_x(x['p50_s'])} | {_x(x['p99_s'])} | {_x(x['ttft_p50_s'])} "
                         f"| {_x(x['throughput_rps'])} | {_pct(r['fidelity'])} | {_pct(r.get('equivalent'))} "
                         f"| {got['date']}, {got['machine']} |")
    # ">" escaped so that no "-->" inside the data can end the comment early.
    data = json.dumps(kept, sort_keys=True, default=_json_default).replace(">", "\\u003e")
    lines += ["", f"<!-- bench.py:results {data} -->", END]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.0f}%"


def _pct1(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _json_default(o: Any) -> Any:
    return None if isinstance(o, float) and not math.isfinite(o) else str(o)


def highlights(rows: list[dict[str, Any]]) -> list[str]:
    """Plain sentences read off the table (no judgement: that is for the reader)."""
    out = []
    for r in rows:
        if r["mode"] == BASELINE:
            continue
        x = r["x"]
        out.append(f"- `{r['mode']}`: Validator CPU above idle {_x(x.get('validator_net_cpu_s'))}, "
                   f"p50 {_x(x['p50_s'])}, p99 {_x(x['p99_s'])}, TTFT {_x(x['ttft_p50_s'])}, "
                   f"throughput {_x(x['throughput_rps'])}; "
                   f"the ledger's Validator ratio {_s(r.get('ledger_validator_ratio'))}; "
                   f"{_pct(r['fidelity'])} of answers identical, {_pct(r.get('equivalent'))} judged equivalent; "
                   f"route mix {mix_text(r['route_mix'])}.")
    return out


def kept_results(md: str) -> dict[str, Any]:
    m = RESULTS_RE.search(md)
    if not m:
        return {}
    try:
        return json.loads(m.group(1))
    except json.JSONDecodeError:
        return {}


def write_section(md_path: Path, section: str) -> None:
    """Replace the text between the markers (inclusive), or append the section when absent."""
    md = md_path.read_text() if md_path.exists() else "# Benchmarks\n"
    if START in md and END in md:
        head, rest = md.split(START, 1)
        _, tail = rest.split(END, 1)
        md = head + section + tail
    else:
        md = md.rstrip("\n") + "\n\n" + section + "\n"
    md_path.write_text(md)


def plot(run: dict[str, Any], results: dict[str, dict[str, Any]], img: Path) -> list[Path]:
    """Latency CDFs, route mix and savings PNGs; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = run["profile"]
    img.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    for key, res in results.items():
        ok = [r for r in res["records"] if r["ok"]]
        for a, vals in ((ax[0], sorted(r["e2e_s"] for r in ok)),
                        (ax[1], sorted(r["ttft_s"] for r in ok if r["stream"] and r["ttft_s"] is not None))):
            if vals:
                a.step(vals, [(i + 1) / len(vals) for i in range(len(vals))], where="post", label=key)
    ax[0].set(xlabel="end-to-end latency (s)", ylabel="share of requests", title=f"End to end ({p})")
    ax[1].set(xlabel="time to first token (s)", title="TTFT (streamed requests)")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    paths.append(img / f"bench_{p}_latency.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    keys = list(results)
    bottom = [0] * len(keys)
    tiers = ["cache", "scout", "validator"]
    tiers += sorted({t for r in results.values() for t in r["route_mix"]} - set(tiers))
    colors = {"cache": "tab:green", "scout": "tab:orange", "validator": "tab:red"}
    for t in tiers:
        vals = [results[k]["route_mix"].get(t, 0) for k in keys]
        if any(vals):
            ax.bar([k.replace("+", "\n+") for k in keys], vals, bottom=bottom, label=t, color=colors.get(t))
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set(ylabel="requests", title=f"Who answered ({p})")
    ax.legend()
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    paths.append(img / f"bench_{p}_routes.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4.2))
    metrics = [("validator_net_cpu_s", "Validator CPU-s\nabove idle"), ("validator_busy_s", "Validator busy-s"),
               ("p50_s", "p50"), ("p99_s", "p99"), ("ttft_p50_s", "TTFT p50"), ("throughput_rps", "throughput")]
    rows = [r for r in run["rows"] if r["mode"] != BASELINE]
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        vals = [v if (v := r["x"].get(m)) is not None and math.isfinite(v) else 0 for m, _ in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], vals, width, label=r["mode"])
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(metrics))], [m[1] for m in metrics])
    ax.set(ylabel="x validator-only (lower is better, except throughput)", title=f"Ratios to validator-only ({p})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(img / f"bench_{p}_savings.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def machine() -> str:
    cores = os.cpu_count()
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", {torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except Exception:  # torch absent or broken: a CPU machine as far as the label goes
        pass
    return f"{cores} cores ({platform.machine()}){gpu or ', no GPU'}"


def code_version() -> str:
    """The commit measured (with a note when the checkout has uncommitted changes), or INFOPT_BENCH_CODE."""
    import subprocess

    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev} (+ uncommitted changes)" if dirty else rev
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("INFOPT_BENCH_CODE", "unknown")


def workload_text(spec: WorkloadSpec, items: list[WorkItem], concurrency: int) -> str:
    arrivals = {"none": f"closed loop, {concurrency} in flight",
                "constant": f"constant {spec.rate}/s, at most {concurrency} in flight",
                "poisson": f"Poisson {spec.rate}/s, at most {concurrency} in flight",
                "azure": f"Azure trace x{spec.time_scale}, at most {concurrency} in flight"}[spec.arrival]
    kinds = ", ".join(f"{k} {v}" for k, v in mix(items).items())
    streams = sum(w.stream for w in items)
    held = ", prompts held out from calibration" if spec.held_out else ""
    return (f"{len(items)} requests (seed {spec.seed}{held}: {kinds}), {streams} streamed, greedy, "
            f"max_tokens {spec.max_tokens}, prompts <= {spec.max_prompt_chars} chars; {arrivals}")


# -- the service ------------------------------------------------------------------------


def deploy(args: dict[str, Any], port: int, health_timeout_s: float = 600) -> str:
    """Run the app with config `args` on `port`; wait for /healthz; return the base URL."""
    import httpx
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app(args), name="infopt", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + health_timeout_s
    with httpx.Client(base_url=base, timeout=30) as c:
        while time.monotonic() < deadline:
            try:
                if c.get("/healthz").status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(1)
    raise RuntimeError("the service did not become healthy")


def warm_up(base: str) -> None:
    import httpx

    with httpx.Client(base_url=base, timeout=600) as c:
        for model in ("scout", "validator"):
            r = c.post("/v1/chat/completions", json={"model": model, "messages": WARMUP, "temperature": 0,
                                                     "max_tokens": 8, "cache": {"mode": "bypass"}})
            r.raise_for_status()


def run_modes(profile: str, modes: list[Mode] | None, items: list[WorkItem], concurrency: int, port: int) -> tuple[
        dict[str, dict[str, Any]], dict[str, str], Any]:
    """Start the service once per mode, measure the workload; return {mode: result}, {mode: why it failed}
    and the profile's config. `modes` None: all modes for the profile."""
    import ray
    from ray import serve

    from serving.config import AppConfig, load_profile, profile_args

    config = load_profile(profile)
    base_args = config.model_dump(mode="json")
    modes = all_modes(profile_args(profile), profile) if modes is None else modes
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for mode in modes:
            cache_dir = Path(tempfile.mkdtemp(prefix=f"bench-{mode.key}-"))
            args = merge(base_args, mode.overrides)
            # An empty cache per mode: a fresh folder (edge), a fresh collection (a Qdrant server).
            args["cache"]["path"] = str(cache_dir)
            args["cache"]["collection"] = f"bench_{re.sub(r'[^a-z0-9]+', '_', mode.key)}_{os.getpid()}"
            cfg = AppConfig(**args)  # fail before deploying when an override is invalid
            t0 = time.perf_counter()
            try:
                try:
                    base = deploy(args, port)
                except Exception as exc:  # one mode that cannot start must not lose the others' figures
                    if mode.key == BASELINE:
                        raise
                    print(f"[{mode.key}] failed to start: {type(exc).__name__}: {exc}", flush=True)
                    failed[mode.key] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    continue
                print(f"[{mode.key}] deployed in {time.perf_counter() - t0:.0f} s", flush=True)
                warm_up(base)
                probe = CpuProbe(CpuProbe.by_cmdline(VALIDATOR_ACTOR))
                res = measure(base, items, concurrency, probe)
                res["label"] = mode.label
                v = cfg.validator
                res["validator_gpus"] = v.tensor_parallel_size * v.pipeline_parallel_size if v.device == "gpu" else 0
                results[mode.key] = res
                print(f"[{mode.key}] {res['ok']}/{res['requests']} ok in {res['wall_s']:.0f} s, "
                      f"p50 {res['p50_s']:.1f} s, route mix {mix_text(res['route_mix'])}, "
                      f"Validator CPU {_s(res['validator_cpu_s'])} s", flush=True)
            finally:
                serve.delete("infopt")
                shutil.rmtree(cache_dir, ignore_errors=True)
                drop_collection(cfg)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results, failed, config


def drop_collection(cfg: Any) -> None:
    """Delete a mode's own collection on a Qdrant server (the edge store's folder is removed with it)."""
    if not cfg.cache.enabled or cfg.cache.backend != "server":
        return
    try:
        from qdrant_client import QdrantClient

        QdrantClient(url=cfg.cache.url, api_key=cfg.cache.api_key, timeout=10).delete_collection(cfg.cache.collection)
    except Exception as exc:  # leaving a test collection behind must not lose the figures
        print(f"  (could not delete Qdrant collection {cfg.cache.collection}: {type(exc).__name__}: {exc})", flush=True)


def make_judge(profile: str, threshold: float) -> Judge | None:
    """The judge over the profile's cache embedder (None, said aloud, when it cannot be loaded)."""
    from serving.config import load_profile

    config = load_profile(profile)
    try:
        return Judge.from_model(config.resolve_model(config.cache.embedder.model), threshold)
    except Exception as exc:
        print(f"  (no judge: the embedder did not load: {type(exc).__name__}: {exc}; 'judged equivalent' is n/a)",
              flush=True)
        return None


def report(run: dict[str, Any], results: dict[str, dict[str, Any]], out: Path, docs: Path | None,
           img: Path | None) -> str:
    """Print and write everything for a finished run; returns the markdown section."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{run['profile']}.json").write_text(
        json.dumps({**run, "results": results}, indent=1, default=_json_default))
    img_rel = os.path.relpath(img, docs.parent) if (img and docs) else "img"
    md = docs.read_text() if docs and docs.exists() else ""
    profiles = [run["profile"], *[p for p in ("tiny", "laptop", *GPU_PROFILES) if p != run["profile"]]]
    section = render_section(run, kept_results(md), profiles, img_rel)
    if img is not None:
        plot(run, results, img)
    if docs is not None:
        write_section(docs, section)
    return section


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--requests", type=int, default=32, help="requests per mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-prompt-chars", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    ap.add_argument("--arrival", default="none", choices=("none", "constant", "poisson", "azure"))
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--stream-share", type=float, default=0.5)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--modes", nargs="+", help="subset of modes (validator-only is always run first)")
    ap.add_argument("--calibration", help="the calibration file of the tiered+calibrated mode (absolute, or relative "
                    "to cluster/; default: the profile's quality.calibration, else calibration/<profile>.json)")
    ap.add_argument("--all-prompts", action="store_true",
                    help="draw from every prompt, those `infopt calibrate` reads included (default: held out)")
    ap.add_argument("--port", type=int, default=8021)
    ap.add_argument("--out", type=Path, default=REPO / "reports")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--img", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--no-docs", action="store_true", help="write reports/ only")
    ap.add_argument("--notes", type=Path, help="markdown file: a reading of the figures, shown under them")
    ap.add_argument("--judge-threshold", type=float, default=JUDGE_THRESHOLD,
                    help="cosine similarity at which two answers are judged equivalent")
    ap.add_argument("--render-only", action="store_true",
                    help="no measuring: rewrite the docs section and plots from reports/bench_<profile>.json")
    ns = ap.parse_args()

    if ns.render_only:
        saved = json.loads((ns.out / f"bench_{ns.profile}.json").read_text())
        results = saved.pop("results")
        saved["rows"] = compare(results, judge=make_judge(ns.profile, ns.judge_threshold))
        if ns.notes:
            saved["notes"] = ns.notes.read_text()
        report(saved, results, ns.out, ns.docs, ns.img)
        print(table(saved["rows"]))
        return 0

    spec = WorkloadSpec(requests=ns.requests, seed=ns.seed, data_dir=ns.data_dir, max_tokens=ns.max_tokens,
                        max_prompt_chars=ns.max_prompt_chars, arrival=ns.arrival, rate=ns.rate,
                        time_scale=ns.time_scale, stream_share=ns.stream_share, held_out=not ns.all_prompts)
    items = build(spec)
    from serving.config import profile_args

    modes = all_modes(profile_args(ns.profile), ns.profile, ns.calibration)
    if ns.modes:
        unknown = set(ns.modes) - {m.key for m in modes}
        if unknown:
            ap.error(f"unknown modes {sorted(unknown)}; known: {[m.key for m in modes]}")
        modes = [m for m in modes if m.key == BASELINE or m.key in ns.modes]
    print(f"workload: {workload_text(spec, items, ns.concurrency)}", flush=True)
    print(f"modes: {', '.join(m.key for m in modes)}", flush=True)
    t0 = time.perf_counter()
    code = code_version()  # what is measured: the checkout as the run starts
    results, failed, config = run_modes(ns.profile, modes, items, ns.concurrency, ns.port)
    judge = make_judge(ns.profile, ns.judge_threshold)  # after the engines are gone: the CPU is free
    run = {"profile": config.profile, "code": code, "scout": config.scout.served_name(),
           "validator": config.validator.served_name(), "date": date.today().isoformat(), "machine": machine(),
           "workload_text": workload_text(spec, items, ns.concurrency), "bench_wall_s": time.perf_counter() - t0,
           "rows": compare(results, judge=judge), "failed_modes": failed,
           "mode_labels": {m.key: m.label for m in modes}, "notes": ns.notes.read_text() if ns.notes else None}
    report(run, results, ns.out, None if ns.no_docs else ns.docs, None if ns.no_docs else ns.img)
    print("\n" + table(run["rows"]))
    print("\n" + "\n".join(highlights(run["rows"])))
    if not ns.no_docs:
        print(f"\nwrote {ns.docs} (section between the bench.py markers), {ns.img}/bench_{run['profile']}_*.png")
    print(f"wrote {ns.out / ('bench_' + run['profile'] + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
