"""Calibration data: prompts answered by both the Scout and the Validator, with the Scout's signals.

Issue 13 fits P(the Scout's answer agrees with the Validator's) from what the Scout knows of
itself (token logprobs, top-k entropy, length, the analyzer's complexity). This module collects
the raw material; fitting and judging are elsewhere.

    infopt calibrate collect --profile tiny --n 240 --split calibration
    infopt calibrate collect --profile tiny --n 120 --split evaluation

**Prompts** (`prompts()`) come from ``../shared/data`` (found relative to the repo, like
`scripts/workload.py`), mixed like the bench workload, first turns only:

=================  =====  ==================================================================
source             share  what
=================  =====  ==================================================================
``sharegpt``       40 %   ShareGPT first human turns of at most 1,500 characters
``mt_bench``       20 %   MT-Bench first turns (80 questions)
``gsm8k``          25 %   GSM8K test questions
``routellm``       15 %   RouteLLM's MMLU prompts (``routellm/mmlu/*.csv``, column ``prompt``:
                          a multiple-choice question ending in ``Answer:``)
=================  =====  ==================================================================

RouteLLM's other two files add nothing new: ``gsm8k_responses.csv`` holds the GSM8K questions
again and ``mt_bench_judgements.jsonl`` holds judge prompts wrapped around MT-Bench
conversations, so RouteLLM's share is its MMLU prompts. When a source has too few prompts in a
split (MT-Bench has ~40 per split, fewer than 20 % of 240), ShareGPT fills the gap (then the
others, in the order above), and the counts actually drawn are printed.

**Splits.** Every prompt has an id ``source:index`` (``sharegpt:<row of the file>``,
``mt_bench:<question_id>``, ``gsm8k:<line of test.jsonl>``, ``routellm:<csv stem>/<row>``).
Its split is a pure function of that id (`split_of`): the first 64 bits of sha256(id), as a
fraction of 2**64, below `calibration_share` (default 0.5) -> ``calibration``, else
``evaluation``. So the split depends on nothing else (not on n, the seed, the mix, the order
of the files or the machine): calibration and evaluation never share a prompt, the fit is
made on ``calibration`` only, and the bench's held-out evaluation reuses ``evaluation`` (call
`split_of` on the same ids). Which prompts of a split are drawn depends on `seed`: per source
they are ranked by sha256(seed|id) and the first k taken, so a larger n draws a superset and a
restart with a smaller n reuses the rows already collected. One caveat: the analyzer's
complexity model was trained on RouteLLM prompts with a split of its own (infopt/training.py),
so on ``routellm`` rows its complexity may be in-sample.

**Collection** (`collect()`): the profile's app on a local Ray, with the semantic cache OFF
(and every request says `cache.mode=bypass` as well) so no answer comes from the cache; the
analyzer stays as the profile has it (`with_analyzer` turns it on). Each prompt gets two
greedy (temperature 0) chat requests, sent together (the engines have their own cores):
``model: scout`` with ``logprobs`` and ``top_logprobs`` (5), and ``model: validator``. One JSONL
row per prompt is appended as soon as both answered, so an interrupted run keeps its rows and
a restart skips the ids already in the file:

    {id, source, split, messages, profile, max_tokens,
     scout: {text, finish_reason, completion_tokens, prompt_tokens, token_logprobs: [..],
             top_logprobs: [[[token, logprob], ..], ..], confidence, threshold, confidence_method},
     validator: {text, finish_reason, completion_tokens, prompt_tokens},
     analyzer: the route trace's analyzer-stage detail (complexity, task, ...) or null,
     scout_ms, validator_ms (client-side wall time of each request), models: {scout, validator}}

With `concurrency` > 1 several prompts are in flight and the engines batch them: faster, but
`scout_ms`/`validator_ms` then include queueing, and greedy text may differ from a
one-at-a-time run in rare near-ties (batched float arithmetic).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
DEFAULT_OUT_DIR = REPO / "reports" / "calibration"
SPLITS = ("calibration", "evaluation")
# The bench-like mix; shares of n. Order matters: a source short of prompts is made up by the
# first ones in this order (ShareGPT first: the largest pool).
SHARES = {"sharegpt": 0.40, "mt_bench": 0.20, "gsm8k": 0.25, "routellm": 0.15}
MAX_PROMPT_CHARS = 1500
WARMUP = [{"role": "user", "content": "Say hello in five words."}]


class DataMissingError(FileNotFoundError):
    """A data file the calibration set needs is not under the data folder."""


# -- splits -------------------------------------------------------------------------------


def split_of(prompt_id: str, calibration_share: float = 0.5) -> str:
    """``calibration`` or ``evaluation``: a pure function of the id (sha256), so the two never overlap."""
    if not 0 <= calibration_share <= 1:
        raise ValueError("calibration_share must be between 0 and 1")
    x = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big") / 2**64
    return "calibration" if x < calibration_share else "evaluation"


def _rank(seed: int, prompt_id: str) -> bytes:
    """Order of prompts within a source for `seed`: a hash, so a larger n draws a superset."""
    return hashlib.sha256(f"{seed}|{prompt_id}".encode()).digest()


# -- sources ------------------------------------------------------------------------------


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataMissingError(f"{path} not found (the data folder defaults to ../shared/data)")
    return path


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def sharegpt_prompts(data_dir: Path, max_chars: int = MAX_PROMPT_CHARS) -> dict[str, str]:
    """{id: text} of ShareGPT first human turns no longer than `max_chars` (longer ones are skipped:
    they would crowd the 2,048-token context of the small profiles and say little more)."""
    rows = json.loads(_need(data_dir / "sharegpt" / "ShareGPT_V3_filtered_1000.json").read_text())
    out = {}
    for i, r in enumerate(rows):
        turns = r.get("conversations") or []
        if turns and turns[0].get("from") == "human":
            text = (turns[0].get("value") or "").strip()
            if 0 < len(text) <= max_chars:
                out[f"sharegpt:{i}"] = text
    return out


def mt_bench_prompts(data_dir: Path, max_chars: int = MAX_PROMPT_CHARS) -> dict[str, str]:
    """{id: text} of MT-Bench first turns (the second turns need the first answer: not single prompts)."""
    out = {}
    for line in _need(data_dir / "mt_bench" / "mt_bench_question.jsonl").read_text().splitlines():
        if line.strip():
            q = json.loads(line)
            text = q["turns"][0].strip()
            if 0 < len(text) <= max_chars:
                out[f"mt_bench:{q['question_id']}"] = text
    return out


def gsm8k_prompts(data_dir: Path, max_chars: int = MAX_PROMPT_CHARS) -> dict[str, str]:
    """{id: text} of GSM8K test questions (asked as they are: the models choose how to show work)."""
    out = {}
    for i, line in enumerate(_need(data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()):
        if line.strip():
            text = json.loads(line)["question"].strip()
            if 0 < len(text) <= max_chars:
                out[f"gsm8k:{i}"] = text
    return out


def routellm_prompts(data_dir: Path, max_chars: int = MAX_PROMPT_CHARS) -> dict[str, str]:
    """{id: text} of RouteLLM's MMLU prompts (its only prompts that are not GSM8K or MT-Bench again)."""
    folder = _need(data_dir / "routellm" / "mmlu")
    out = {}
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                text = (row.get("prompt") or "").strip()
                if 0 < len(text) <= max_chars:
                    out[f"routellm:{path.stem}/{i}"] = text
    if not out:
        raise DataMissingError(f"no prompts in {folder}/*.csv")
    return out


SOURCES = {"sharegpt": sharegpt_prompts, "mt_bench": mt_bench_prompts, "gsm8k": gsm8k_prompts,
           "routellm": routellm_prompts}


def source_of(prompt_id: str) -> str:
    """The source part of an id (``gsm8k:12`` -> ``gsm8k``)."""
    return prompt_id.split(":", 1)[0]


# -- drawing the prompts ------------------------------------------------------------------


def targets(n: int, available: dict[str, int], shares: dict[str, float] | None = None) -> dict[str, int]:
    """How many prompts to draw per source: `shares` of n (largest remainders), capped by what is
    `available`; a shortfall is made up by the sources in `shares` order (ShareGPT first)."""
    shares = shares or SHARES
    n = min(n, sum(available.get(s, 0) for s in shares))
    raw = {s: n * shares[s] for s in shares}
    want = {s: int(raw[s]) for s in shares}
    for s in sorted(shares, key=lambda s: raw[s] - want[s], reverse=True)[: n - sum(want.values())]:
        want[s] += 1
    got = {s: min(want[s], available.get(s, 0)) for s in shares}
    short = n - sum(got.values())
    for s in shares:
        extra = min(short, available.get(s, 0) - got[s])
        got[s] += extra
        short -= extra
    return got


def prompts(data_dir: Path | str = DEFAULT_DATA_DIR, n: int = 200, split: str = "calibration", seed: int = 0,
            calibration_share: float = 0.5, max_chars: int = MAX_PROMPT_CHARS) -> list[dict[str, Any]]:
    """A deterministic list of `n` prompt records {id, source, messages, split} from `split`.

    Deterministic for (data, n, split, seed, calibration_share); mixed by `SHARES`; in an order
    that interleaves the sources (so an interrupted collection still holds a mix).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}")
    if n < 0:
        raise ValueError("n must be >= 0")
    data_dir = Path(data_dir)
    pools: dict[str, list[tuple[str, str]]] = {}
    for source, load in SOURCES.items():
        items = [(pid, text) for pid, text in load(data_dir, max_chars).items()
                 if split_of(pid, calibration_share) == split]
        pools[source] = sorted(items, key=lambda it: _rank(seed, it[0]))
    counts = targets(n, {s: len(p) for s, p in pools.items()})
    chosen = [(pid, text) for s, k in counts.items() for pid, text in pools[s][:k]]
    # One more hash for the order: sources interleave, and the order of a prompt does not move
    # when n changes.
    chosen.sort(key=lambda it: _rank(seed + 1, it[0]))
    return [{"id": pid, "source": source_of(pid), "messages": _user(text), "split": split} for pid, text in chosen]


def mix(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts by split and source."""
    out: dict[str, Counter] = {}
    for r in records:
        out.setdefault(r["split"], Counter())[r["source"]] += 1
    return {split: dict(sorted(c.items())) for split, c in out.items()}


# -- one prompt -----------------------------------------------------------------------------


class CollectError(RuntimeError):
    """A request of one prompt failed; the prompt gets no row (a rerun retries it)."""


def _body(record: dict[str, Any], model: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    # cache.mode=bypass: never answered from (nor admitted to) a cache, even on a service that has one.
    return {"model": model, "messages": record["messages"], "temperature": 0, "max_tokens": max_tokens,
            "stream": False, "cache": {"mode": "bypass"}, **extra}


async def _post(client: Any, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    r = await client.post("/v1/chat/completions", json=body)
    ms = (time.perf_counter() - t0) * 1000
    try:
        data = r.json()
    except ValueError:
        data = {"error": {"message": r.text[:300]}}
    if r.status_code >= 400 or "error" in data:
        err = data.get("error")
        msg = err.get("message", err) if isinstance(err, dict) else err
        raise CollectError(f"{body['model']}: HTTP {r.status_code}: {msg}")
    return data, ms


def _answer(data: dict[str, Any]) -> dict[str, Any]:
    choice = (data.get("choices") or [{}])[0]
    usage = data.get("usage") or {}
    return {"text": (choice.get("message") or {}).get("content") or "", "finish_reason": choice.get("finish_reason"),
            "completion_tokens": usage.get("completion_tokens"), "prompt_tokens": usage.get("prompt_tokens")}


def _stage(route: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    for st in (route or {}).get("stages") or []:
        if st.get("stage") == name:
            return st.get("detail") or {}
    return None


async def collect_one(client: Any, record: dict[str, Any], *, profile: str, max_tokens: int = 128,
                      top_logprobs: int = 5) -> dict[str, Any]:
    """Ask the Scout (with logprobs) and the Validator the prompt of `record`, together; return its row.

    `client` is an `httpx.AsyncClient` (or anything with its `post`) whose base URL is the service.
    """
    scout_body = _body(record, "scout", max_tokens, logprobs=True, top_logprobs=top_logprobs)
    (s_data, s_ms), (v_data, v_ms) = await asyncio.gather(
        _post(client, scout_body), _post(client, _body(record, "validator", max_tokens)))
    scout = _answer(s_data)
    lp = ((s_data.get("choices") or [{}])[0].get("logprobs") or {}).get("content") or []
    scout["token_logprobs"] = [t["logprob"] for t in lp]
    scout["top_logprobs"] = [[[a["token"], a["logprob"]] for a in t.get("top_logprobs") or []] for t in lp]
    route = s_data.get("route") or {}
    # The service's own confidence of this answer, under the profile's method (what it routes by today).
    scout.update(confidence=route.get("confidence"), threshold=route.get("threshold"),
                 confidence_method=route.get("confidence_method"))
    analyzer = _stage(route, "analyzer") or _stage(v_data.get("route"), "analyzer")
    return {"id": record["id"], "source": record["source"], "split": record["split"], "messages": record["messages"],
            "profile": profile, "max_tokens": max_tokens, "scout": scout, "validator": _answer(v_data),
            "analyzer": analyzer, "scout_ms": round(s_ms, 1), "validator_ms": round(v_ms, 1),
            "models": {"scout": s_data.get("model"), "validator": v_data.get("model")}}


# -- the output file ------------------------------------------------------------------------


def done_ids(path: Path) -> set[str]:
    """Ids that already have a row in `path` (a torn last line, from an interrupted write, is ignored)."""
    if not path.exists():
        return set()
    out = set()
    for line in path.read_text().splitlines():
        try:
            out.add(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _open_for_append(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    f = path.open("a")
    if torn:  # a row cut short by an interrupt: start the next row on a line of its own
        f.write("\n")
    return f


async def collect_rows(client: Any, records: list[dict[str, Any]], out_path: Path | str, *, profile: str,
                       max_tokens: int = 128, top_logprobs: int = 5, concurrency: int = 1,
                       progress: bool = True) -> dict[str, Any]:
    """Collect a row for every record not yet in `out_path`, appending each as it completes.

    Returns a summary: rows written, skipped (already there), failed (no row; a rerun retries
    them), the errors, and the seconds per prompt.
    """
    from tqdm import tqdm

    out_path = Path(out_path)
    done = done_ids(out_path)
    todo = [r for r in records if r["id"] not in done]
    summary: dict[str, Any] = {"written": 0, "skipped": len(records) - len(todo), "failed": 0, "errors": [],
                               "seconds": 0.0, "s_per_prompt": None, "first10_s_per_prompt": None}
    if not todo:
        return summary
    sem = asyncio.Semaphore(max(1, concurrency))
    t0 = time.perf_counter()

    async def one(record: dict[str, Any]) -> dict[str, Any] | Exception:
        async with sem:
            try:
                return await collect_one(client, record, profile=profile, max_tokens=max_tokens,
                                         top_logprobs=top_logprobs)
            except Exception as exc:  # one prompt's failure must not lose the others' rows
                return CollectError(f"{record['id']}: {type(exc).__name__}: {exc}")

    bar = tqdm(total=len(todo), desc=f"{profile} {records[0]['split']}", unit="prompt", disable=not progress,
               file=sys.stderr)
    with _open_for_append(out_path) as f:
        for finished, fut in enumerate(asyncio.as_completed([one(r) for r in todo]), start=1):
            row = await fut
            if isinstance(row, Exception):
                summary["failed"] += 1
                summary["errors"].append(str(row)[:500])
                bar.write(f"failed: {row}")
            else:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()  # written as we go: an interrupted run keeps its rows
                summary["written"] += 1
            if finished == min(10, len(todo)):
                per = (time.perf_counter() - t0) / finished
                summary["first10_s_per_prompt"] = round(per, 2)
                bar.write(f"first {finished}: {per:.1f} s/prompt -> about {per * len(todo) / 60:.0f} min "
                          f"for the {len(todo)} to collect")
            bar.update(1)
    bar.close()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["s_per_prompt"] = round(summary["seconds"] / len(todo), 2)
    return summary


# -- the service ----------------------------------------------------------------------------


def collection_args(profile: str, with_analyzer: bool | None = None) -> dict[str, Any]:
    """The profile's app config for collection: the cache off (answers must come from the engines)."""
    from serving.config import AppConfig, load_profile

    args = load_profile(profile).model_dump(mode="json")
    args["cache"]["enabled"] = False
    if with_analyzer is not None:
        args["analyzer"]["enabled"] = with_analyzer
    AppConfig(**args)  # fail here, before Ray starts, if an override is invalid
    return args


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(args: dict[str, Any], port: int, health_timeout_s: float = 900) -> str:
    """Run the app with config `args` on a started Serve; wait for /healthz; return the base URL."""
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
            time.sleep(2)
    raise RuntimeError(f"the service did not become healthy within {health_timeout_s:.0f} s")


def _warm_up(base: str) -> None:
    """One short request per tier outside the data: the first request of a cold engine is slow."""
    import httpx

    with httpx.Client(base_url=base, timeout=600) as c:
        for model in ("scout", "validator"):
            c.post("/v1/chat/completions", json={"model": model, "messages": WARMUP, "temperature": 0,
                                                 "max_tokens": 8, "cache": {"mode": "bypass"}}).raise_for_status()


def collect(profile: str, records: list[dict[str, Any]], out_path: Path | str, max_tokens: int = 128, *,
            top_logprobs: int = 5, concurrency: int = 1, with_analyzer: bool | None = None,
            base_url: str | None = None, port: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Deploy `profile` on a local Ray (cache off), collect a row per record into `out_path`, tear down.

    With `base_url` an already running service is used instead (its cache is bypassed per request;
    its analyzer is whatever it runs). Returns `collect_rows`'s summary plus the startup time.
    """
    import logging

    import httpx

    # Ray configures the root logger at INFO: without this every request would print a line.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    out_path = Path(out_path)
    if not records:
        return {"written": 0, "skipped": 0, "failed": 0, "errors": []}
    if not [r for r in records if r["id"] not in done_ids(out_path)]:
        return {"written": 0, "skipped": len(records), "failed": 0, "errors": []}

    def run(base: str) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=base, timeout=900) as client:
                return await collect_rows(client, records, out_path, profile=profile, max_tokens=max_tokens,
                                          top_logprobs=top_logprobs, concurrency=concurrency, progress=progress)

        return asyncio.run(go())

    if base_url:
        return run(base_url)

    import ray
    from ray import serve

    args = collection_args(profile, with_analyzer)
    port = port or _free_port()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A busy 2-core machine can take longer than Ray's default 30 s to bring the GCS up.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "180")
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    # A run in the background ignores SIGINT, and Ray's own SIGTERM handler exits without tearing the
    # app down: make SIGTERM an interrupt, so the `finally` below shuts Serve and Ray down.
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = deploy(args, port)
        _warm_up(base)
        startup_s = time.perf_counter() - t0
        print(f"profile '{profile}' up in {startup_s:.0f} s (cache off, analyzer "
              f"{'on' if args['analyzer']['enabled'] else 'off'})", file=sys.stderr, flush=True)
        summary = run(base)
        summary["startup_s"] = round(startup_s, 1)
        return summary
    finally:
        serve.shutdown()
        ray.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def default_out(profile: str, split: str) -> Path:
    """reports/calibration/<profile>-<split>.jsonl (reports/ is not committed)."""
    return DEFAULT_OUT_DIR / f"{Path(profile).stem}-{split}.jsonl"


if __name__ == "__main__":
    from infopt.cli import main

    sys.exit(main(["calibrate", *sys.argv[1:]]))
