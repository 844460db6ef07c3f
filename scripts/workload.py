"""The load-test workload, built from real data, and how one request of it is measured.

Shared by `scripts/locustfile.py` (locust users) and `scripts/bench.py` (the side-by-side
benchmark), so both send the same requests for the same seed.

    from workload import WorkloadSpec, build
    items = build(WorkloadSpec(requests=40, seed=0))

What a workload holds (shares are of the total request count; the rest is ShareGPT):

- ``sharegpt``: first-turn ShareGPT prompts (`sharegpt/ShareGPT_V3_filtered_1000.json`).
- ``exact_repeat``: a byte-identical repeat of an earlier ShareGPT or GSM8K request.
- ``paraphrase_first`` / ``paraphrase``: a QQP duplicate pair (`qqp/qqp_dev.tsv`,
  is_duplicate=1): q1 is asked first, q2 later (a semantic-cache candidate).
- ``gsm8k``: grade-school maths (`gsm8k/test.jsonl`), hard for a small Scout.
- ``session_turn1`` / ``session_turn2``: multi-turn MT-Bench sessions with one shared system
  prompt; turn 2 carries turn 1 and GPT-4's reference answer as history (fixed history, so
  every run and every mode sends the same bytes), i.e. the sessions share a prefix.

Arrivals (`at_s`, seconds from the start): ``azure`` replays the inter-arrival times of the
Azure LLM inference trace (`traces/AzureLLMInferenceTrace_conv.csv`) multiplied by
`time_scale`; ``constant`` and ``poisson`` use `rate` requests/s; ``none`` sends everything
at once (a closed loop: the client's concurrency is the only limit).

Every request is greedy (temperature 0): answers are comparable across modes and cacheable.
Everything is deterministic for a given spec (seed included). No heavy imports.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
SESSION_SYSTEM = "You are a helpful assistant. Answer clearly and concisely."
KINDS = ("sharegpt", "exact_repeat", "paraphrase_first", "paraphrase", "gsm8k", "session_turn1", "session_turn2")
ARRIVALS = ("azure", "constant", "poisson", "none")


class DataMissingError(FileNotFoundError):
    """A data file the workload needs is not under the data folder."""


@dataclass
class WorkloadSpec:
    """What to generate. Shares are fractions of `requests`; ShareGPT fills the rest."""

    requests: int = 200
    seed: int = 0
    data_dir: Path = DEFAULT_DATA_DIR
    exact_repeat_share: float = 0.10
    paraphrase_share: float = 0.10
    gsm8k_share: float = 0.15
    session_share: float = 0.10
    stream_share: float = 0.5
    max_tokens: int = 64
    max_prompt_chars: int = 1500
    arrival: str = "azure"
    rate: float = 1.0
    time_scale: float = 1.0
    model: str = "auto"
    # Only prompts `infopt calibrate` never sees (`calibration_seen`): a bench of a calibrated profile must not
    # measure its guarantee on the data that chose its bound.
    held_out: bool = False

    def validate(self) -> None:
        if self.requests < 1:
            raise ValueError("requests must be >= 1")
        shares = (self.exact_repeat_share, self.paraphrase_share, self.gsm8k_share, self.session_share)
        if any(s < 0 for s in shares) or not 0 <= self.stream_share <= 1:
            raise ValueError("shares must be between 0 and 1")
        # Each paraphrase and each session turn 2 needs its own first request.
        if self.exact_repeat_share + 2 * self.paraphrase_share + self.gsm8k_share + self.session_share > 1 + 1e-9:
            raise ValueError("exact_repeat + 2*paraphrase + gsm8k + session shares must not exceed 1")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}")
        if self.arrival in ("constant", "poisson") and self.rate <= 0:
            raise ValueError("rate must be > 0")


@dataclass
class WorkItem:
    """One request of the workload."""

    id: str
    kind: str
    messages: list[dict[str, str]]
    at_s: float = 0.0
    stream: bool = False
    max_tokens: int = 64
    group: str | None = None  # the pair, session or original this request belongs to

    def body(self, model: str = "auto", **extra: Any) -> dict[str, Any]:
        """The JSON body of the chat-completion request."""
        body: dict[str, Any] = {"model": model, "messages": self.messages, "temperature": 0,
                                "max_tokens": self.max_tokens, "stream": self.stream}
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        body.update(extra)
        return body


# -- data -------------------------------------------------------------------------------


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataMissingError(f"{path} not found (set the data folder, default ../shared/data)")
    return path


def sharegpt_prompts(data_dir: Path, max_chars: int) -> list[str]:
    rows = json.loads(_need(data_dir / "sharegpt" / "ShareGPT_V3_filtered_1000.json").read_text())
    out = []
    for r in rows:
        turns = r.get("conversations") or []
        if turns and turns[0].get("from") == "human":
            text = turns[0].get("value", "").strip()
            if 0 < len(text) <= max_chars:
                out.append(text)
    return out


def qqp_duplicates(data_dir: Path, max_chars: int) -> list[tuple[str, str]]:
    out = []
    with _need(data_dir / "qqp" / "qqp_dev.tsv").open(newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) == 6 and row[5] == "1" and row[3].strip() and row[4].strip() != row[3].strip() \
                    and max(len(row[3]), len(row[4])) <= max_chars:
                out.append((row[3].strip(), row[4].strip()))
    return out


def gsm8k_questions(data_dir: Path, max_chars: int) -> list[str]:
    lines = _need(data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()
    qs = [json.loads(line)["question"] for line in lines if line.strip()]
    return [q for q in qs if len(q) <= max_chars]


def mt_bench_sessions(data_dir: Path, max_chars: int) -> list[tuple[str, str, str]]:
    """(turn 1, reference answer to turn 1, turn 2) for MT-Bench questions with a GPT-4 reference."""
    d = data_dir / "mt_bench"
    qs = {}
    for line in _need(d / "mt_bench_question.jsonl").read_text().splitlines():
        if line.strip():
            q = json.loads(line)
            qs[q["question_id"]] = q["turns"]
    out = []
    for line in _need(d / "mt_bench_reference_answer_gpt-4.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        a = json.loads(line)
        turns = qs.get(a["question_id"])
        if turns and len(turns) >= 2:
            out.append((turns[0], a["choices"][0]["turns"][0][:max_chars], turns[1]))
    return out


def azure_interarrivals(data_dir: Path) -> list[float]:
    """Seconds between consecutive arrivals of the Azure conversation trace."""
    path = _need(data_dir / "traces" / "AzureLLMInferenceTrace_conv.csv")
    with path.open(newline="") as f:
        # 7 fractional digits in the file; datetime takes 6.
        ts = [datetime.fromisoformat(r["TIMESTAMP"][:26]).timestamp() for r in csv.DictReader(f)]
    ts.sort()
    return [b - a for a, b in itertools.pairwise(ts)]


# -- generation -------------------------------------------------------------------------


def _arrivals(spec: WorkloadSpec, n: int, rng: random.Random) -> list[float]:
    if spec.arrival == "none":
        return [0.0] * n
    if spec.arrival == "constant":
        return [i / spec.rate for i in range(n)]
    if spec.arrival == "poisson":
        t, out = 0.0, []
        for _ in range(n):
            out.append(t)
            t += rng.expovariate(spec.rate)
        return out
    gaps = azure_interarrivals(spec.data_dir)
    if len(gaps) < n:
        raise ValueError(f"the Azure trace has {len(gaps) + 1} arrivals; asked for {n}")
    start = rng.randrange(0, len(gaps) - n + 2)  # a random window of the hour
    t, out = 0.0, []
    for i in range(n):
        out.append(t)
        if i < n - 1:
            t += gaps[start + i] * spec.time_scale
    return out


def calibration_seen(data_dir: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """What `infopt calibrate` may see, to keep it out of a held-out workload: the texts of every prompt in the
    Scout's calibration split (whatever number a run drew from it), and the QQP pairs of the cache's
    *evaluation* split, the only ones its calibration never reads. Both splits are pure functions of ids
    (`infopt.calibration_data.split_of`, `infopt.calibrate.qqp_split`)."""
    from infopt import calibration_data as cd
    from infopt.calibrate import load_qqp, qqp_split

    seen: set[str] = set()
    for source in (cd.sharegpt_prompts, cd.mt_bench_prompts, cd.gsm8k_prompts):
        for prompt_id, text in source(data_dir, max_chars=10**9).items():
            if cd.split_of(prompt_id) == "calibration":
                seen.add(text.strip())
    unseen_pairs = qqp_split(load_qqp(_need(data_dir / "qqp" / "qqp_dev.tsv")))["evaluation"]
    return seen, {(p.q1.strip(), p.q2.strip()) for p in unseen_pairs}


def build(spec: WorkloadSpec) -> list[WorkItem]:
    """The requests of `spec`, in arrival order, deterministic for its seed."""
    spec.validate()
    rng = random.Random(spec.seed)
    sharegpt = sharegpt_prompts(spec.data_dir, spec.max_prompt_chars)
    gsm8k = gsm8k_questions(spec.data_dir, spec.max_prompt_chars)
    pairs = qqp_duplicates(spec.data_dir, spec.max_prompt_chars)
    sessions = mt_bench_sessions(spec.data_dir, spec.max_prompt_chars)
    if spec.held_out:
        seen, unseen_pairs = calibration_seen(spec.data_dir)
        sharegpt = [t for t in sharegpt if t.strip() not in seen]
        gsm8k = [t for t in gsm8k if t.strip() not in seen]
        pairs = [p for p in pairs if (p[0].strip(), p[1].strip()) in unseen_pairs]
        sessions = [s for s in sessions if s[0].strip() not in seen]
    n = spec.requests
    n_exact = round(n * spec.exact_repeat_share)
    n_para = round(n * spec.paraphrase_share)
    n_sess = round(n * spec.session_share / 2)
    n_gsm = round(n * spec.gsm8k_share)
    n_share = n - n_exact - 2 * n_para - 2 * n_sess - n_gsm
    if n_share < 0:
        raise ValueError("shares leave no room: lower them or raise requests")

    def pick(pool: list, k: int, what: str) -> list:
        if k == 0:
            return []
        if not pool:
            raise DataMissingError(f"no usable {what} (max_prompt_chars={spec.max_prompt_chars}?)")
        return rng.sample(pool, k) if k <= len(pool) else [rng.choice(pool) for _ in range(k)]

    fresh: list[WorkItem] = []
    for text in pick(sharegpt, n_share, "ShareGPT prompts"):
        fresh.append(WorkItem("", "sharegpt", [{"role": "user", "content": text}]))
    for text in pick(gsm8k, n_gsm, "GSM8K questions"):
        fresh.append(WorkItem("", "gsm8k", [{"role": "user", "content": text}]))
    later: list[tuple[WorkItem, WorkItem]] = []  # (original, the request that must come after it)
    for i, (q1, q2) in enumerate(pick(pairs, n_para, "QQP pairs")):
        first = WorkItem("", "paraphrase_first", [{"role": "user", "content": q1}], group=f"pair{i}")
        fresh.append(first)
        later.append((first, WorkItem("", "paraphrase", [{"role": "user", "content": q2}], group=f"pair{i}")))
    for i, (t1, a1, t2) in enumerate(pick(sessions, n_sess, "MT-Bench sessions")):
        system = {"role": "system", "content": SESSION_SYSTEM}
        first = WorkItem("", "session_turn1", [system, {"role": "user", "content": t1}], group=f"session{i}")
        fresh.append(first)
        second = WorkItem("", "session_turn2", [system, {"role": "user", "content": t1},
                                                {"role": "assistant", "content": a1},
                                                {"role": "user", "content": t2}], group=f"session{i}")
        later.append((first, second))
    rng.shuffle(fresh)
    originals = [w for w in fresh if w.kind in ("sharegpt", "gsm8k")]
    if n_exact and not originals:
        raise ValueError("exact repeats need ShareGPT or GSM8K requests to repeat")
    for _ in range(n_exact):
        orig = rng.choice(originals)
        later.append((orig, WorkItem("", "exact_repeat", [dict(m) for m in orig.messages], group=None)))
    order = list(fresh)
    for orig, item in later:
        pos = next(i for i, w in enumerate(order) if w is orig)
        order.insert(rng.randint(pos + 1, len(order)), item)
    for i, item in enumerate(order):
        item.id = f"r{i:04d}"
    for orig, item in later:
        if item.kind == "exact_repeat":
            item.group = orig.id  # an exact repeat points at the request it repeats
    for item in order:
        item.max_tokens = spec.max_tokens
        item.stream = rng.random() < spec.stream_share
    for item, at in zip(order, _arrivals(spec, len(order), rng), strict=True):
        item.at_s = round(at, 6)
    return order


def mix(items: list[WorkItem]) -> dict[str, int]:
    """How many requests of each kind."""
    out = dict.fromkeys(KINDS, 0)
    for w in items:
        out[w.kind] += 1
    return {k: v for k, v in out.items() if v}


# -- measuring one request ----------------------------------------------------------------


@dataclass
class Record:
    """What the client saw of one request. Times are seconds from sending it."""

    id: str
    kind: str
    stream: bool
    ok: bool = False
    status: int = 0
    error: str | None = None
    headers_s: float | None = None
    ttft_s: float | None = None  # first content chunk (streams); the whole answer otherwise
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)  # gaps between consecutive content chunks
    chunks: int = 0  # content-bearing chunks (one token each from vLLM)
    completion_tokens: int | None = None
    text: str = ""
    tier: str | None = None  # from the route object (x-infopt-route header as a fallback)
    reason: str | None = None
    route: dict[str, Any] | None = None
    sent_at_s: float = 0.0  # when it was sent, from the start of the run
    lag_s: float = 0.0  # how late against its scheduled arrival (client saturated)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StreamReader:
    """Feeds SSE lines of one streamed chat completion into a `Record`, timing each chunk.

    `t0` is `time.perf_counter()` when the request was sent; call `line()` for each line as it
    arrives and `close()` at the end. `on_token(t)` (optional) is called with the arrival time
    of each content chunk, so callers can emit their own events.
    """

    def __init__(self, rec: Record, t0: float):
        self.rec, self.t0 = rec, t0
        self.parts: list[str] = []
        self.last: float | None = None
        self.done = False

    def line(self, raw: str | bytes, now: float | None = None) -> float | None:
        """Handle one SSE line; return the inter-token gap (s) when it was a later content chunk."""
        now = time.perf_counter() if now is None else now
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        raw = raw.strip()
        if not raw.startswith("data:"):
            return None
        data = raw[5:].strip()
        if data == "[DONE]":
            self.done = True
            return None
        obj = json.loads(data)
        if "error" in obj:
            self.rec.error = str(obj["error"].get("message", obj["error"]))
            return None
        if obj.get("route"):
            self.rec.route = obj["route"]
        if obj.get("usage"):
            self.rec.completion_tokens = obj["usage"].get("completion_tokens")
        gap = None
        for choice in obj.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.parts.append(content)
                self.rec.chunks += 1
                if self.last is None:
                    self.rec.ttft_s = now - self.t0
                else:
                    gap = now - self.last
                    self.rec.itl_s.append(gap)
                self.last = now
        return gap

    def close(self, now: float | None = None) -> Record:
        now = time.perf_counter() if now is None else now
        rec = self.rec
        rec.e2e_s = now - self.t0
        rec.text = "".join(self.parts)
        if not self.done and rec.error is None:
            rec.error = "stream ended without [DONE]"
        apply_route(rec)
        rec.ok = rec.error is None and 200 <= rec.status < 300
        return rec


def read_whole(rec: Record, status: int, body: dict[str, Any], e2e_s: float, header_tier: str | None) -> Record:
    """Fill `rec` from a non-streamed response."""
    rec.status, rec.e2e_s = status, e2e_s
    rec.headers_s = rec.ttft_s = e2e_s  # the whole answer arrives at once
    if status >= 400 or "error" in body:
        err = body.get("error") or {}
        rec.error = str(err.get("message", err)) if isinstance(err, dict) else str(err)
    else:
        choices = body.get("choices") or [{}]
        rec.text = (choices[0].get("message") or {}).get("content") or ""
        rec.completion_tokens = (body.get("usage") or {}).get("completion_tokens")
        rec.route = body.get("route")
    apply_route(rec, header_tier)
    rec.ok = rec.error is None and 200 <= status < 300
    return rec


def apply_route(rec: Record, header_tier: str | None = None) -> None:
    if rec.route:
        rec.tier, rec.reason = rec.route.get("tier"), rec.route.get("reason")
    elif header_tier and header_tier != "none":
        rec.tier = header_tier


def validator_work(route: dict[str, Any] | None) -> tuple[float, int]:
    """(seconds, tokens generated) the Validator spent on one request, from its route trace."""
    secs, toks = 0.0, 0
    for st in (route or {}).get("stages") or []:
        if st.get("stage") == "validator":
            secs += st.get("latency_ms", 0.0) / 1000
            d = st.get("detail") or {}
            toks += int(d.get("generated_tokens", d.get("tokens", 0)) or 0)
    return secs, toks


# -- aggregation --------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile (nearest rank on the sorted values); NaN when empty."""
    xs = sorted(xs)
    if not xs:
        return math.nan
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def summarize(records: list[Record], wall_s: float) -> dict[str, Any]:
    """Latency percentiles, throughput, route mix and the Validator's work over `records`."""
    ok = [r for r in records if r.ok]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    ttft = [r.ttft_s for r in ok if r.stream and r.ttft_s is not None]
    itl = [g for r in ok if r.stream for g in r.itl_s]
    tokens = sum(r.completion_tokens if r.completion_tokens is not None else r.chunks for r in ok)
    routes: dict[str, int] = {}
    for r in records:
        key = r.tier or ("error" if not r.ok else "unknown")
        routes[key] = routes.get(key, 0) + 1
    v_secs = v_toks = 0.0
    for r in ok:
        s, t = validator_work(r.route)
        v_secs += s
        v_toks += t
    return {
        "requests": len(records), "ok": len(ok), "errors": len(records) - len(ok), "wall_s": wall_s,
        "p50_s": pct(e2e, 50), "p99_s": pct(e2e, 99), "mean_s": statistics.fmean(e2e) if e2e else math.nan,
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "streams": len(ttft),
        "itl_p50_s": pct(itl, 50), "itl_events": len(itl),
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else math.nan,
        "tokens_per_s": tokens / wall_s if wall_s > 0 else math.nan, "completion_tokens": tokens,
        "route_mix": routes, "validator_busy_s": v_secs, "validator_tokens": int(v_toks),
        "lag_p50_s": pct([r.lag_s for r in records], 50),
    }
