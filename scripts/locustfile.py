"""Locust load test of the OpenAI-compatible API, driven by a real-data workload.

    make run                           # in another shell: the service on 127.0.0.1:8000
    make load                          # headless, bounded; CSV, HTML and JSON under reports/load/
    locust -f scripts/locustfile.py --host http://127.0.0.1:8000      # web UI on :8089

Users: `StreamingChatUser` (SSE) and `ChatUser` (one JSON answer); `--stream-share` sets the
share of streaming users. Both take their next request from one shared schedule built by
`scripts/workload.py` (ShareGPT prompts, exact repeats, QQP paraphrase pairs, GSM8K, MT-Bench
sessions; see its docstring) and send it at its scheduled arrival time: arrivals follow the
Azure trace (`--arrival azure --time-scale 0.5` is twice as fast), a `constant` or `poisson`
rate, or `none` (closed loop). That is an open-loop arrival process as long as a user is free
when a request is due, so run more users than the requests you expect in flight; how late
requests were sent is reported (`lag`). When the schedule is done the run stops
(`--loop` replays it instead).

What is recorded (locust rows, so the CSV/HTML show them beside the HTTP rows):
- `POST /v1/chat/completions [stream]`: a streamed request's HTTP row measures the time to
  the response *headers* only, which is why the stream is measured as its own events:
- `STREAM ttft`: time to the first content chunk; `STREAM inter-token`: each gap between
  consecutive content chunks (chunks-1 events per stream); `STREAM e2e`: until `[DONE]`.
- `ROUTE <tier>`: one event per answered request, named by the tier of its route object
  (`cache`, `scout`, `validator`; `x-infopt-route` header as a fallback), timed end to end:
  the route mix with each tier's latency.
- `--report-json PATH` (default `<--csv prefix>_requests.json` when `--csv` is given): a summary
  (p50/p99, TTFT, throughput, route mix, Validator seconds and tokens from the route traces)
  and every request's record. `--json-file` (locust's own) writes the rows' final stats.

Options (also as environment variables, e.g. INFOPT_LOAD_ARRIVAL=constant): see
`locust -f scripts/locustfile.py --help`, section "Custom arguments".
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, constant, events, task
from locust import stats as locust_stats
from locust.exception import StopUser

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import (
    ARRIVALS,
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

CHAT_PATH = "/v1/chat/completions"
ROUTE_HEADER = "x-infopt-route"


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    spec = WorkloadSpec()

    def add(flag: str, env: str, **kw: Any) -> None:
        parser.add_argument(flag, env_var=f"INFOPT_LOAD_{env}", **kw)

    add("--workload-requests", "REQUESTS", type=int, default=spec.requests, help="requests in the schedule")
    add("--workload-seed", "SEED", type=int, default=spec.seed, help="seed of the workload (same seed, same requests)")
    add("--data-dir", "DATA_DIR", default=str(DEFAULT_DATA_DIR), help="folder of the shared data (../shared/data)")
    add("--stream-share", "STREAM_SHARE", type=float, default=spec.stream_share,
        help="share of users that stream (StreamingChatUser); the rest are ChatUser")
    add("--exact-repeat-share", "EXACT_REPEAT_SHARE", type=float, default=spec.exact_repeat_share,
        help="share of requests that repeat an earlier one byte for byte")
    add("--paraphrase-share", "PARAPHRASE_SHARE", type=float, default=spec.paraphrase_share,
        help="share of requests that paraphrase an earlier one (QQP duplicate pairs)")
    add("--gsm8k-share", "GSM8K_SHARE", type=float, default=spec.gsm8k_share, help="share of GSM8K maths questions")
    add("--session-share", "SESSION_SHARE", type=float, default=spec.session_share,
        help="share of requests in two-turn MT-Bench sessions sharing a prefix")
    add("--arrival", "ARRIVAL", choices=ARRIVALS, default=spec.arrival,
        help="azure: the Azure trace's inter-arrival times x --time-scale; constant/poisson: --rate; none: closed loop")
    add("--rate", "RATE", type=float, default=spec.rate, help="requests/s for --arrival constant or poisson")
    add("--time-scale", "TIME_SCALE", type=float, default=spec.time_scale,
        help="multiplies the Azure trace's gaps (0.5 = twice as fast)")
    add("--max-tokens", "MAX_TOKENS", type=int, default=spec.max_tokens, help="max_tokens of every request")
    add("--max-prompt-chars", "MAX_PROMPT_CHARS", type=int, default=spec.max_prompt_chars,
        help="longest prompt taken from the data")
    add("--model", "MODEL", default=spec.model, help="model of every request: auto, scout or validator")
    add("--loop", "LOOP", action="store_true", default=False, help="replay the schedule when it is done")
    add("--report-json", "REPORT_JSON", default="",
        help="write the summary and per-request records here (default: <--csv prefix>_requests.json)")


class Schedule:
    """The shared arrival schedule: each user takes the next request and sends it when it is due."""

    def __init__(self, items: list[WorkItem], loop: bool):
        self.items, self.loop = items, loop
        self.period = (items[-1].at_s + max(items[-1].at_s / max(len(items) - 1, 1), 0.001)) if items else 0.0
        self.next = 0
        self.inflight = 0
        self.quitting = False
        self.start = time.perf_counter()
        self.records: list[Record] = []

    def take(self) -> tuple[WorkItem, float] | None:
        """The next request and the perf_counter time it is due, or None when the schedule is done."""
        if not self.items or (self.next >= len(self.items) and not self.loop):
            return None
        rnd, i = divmod(self.next, len(self.items))
        self.next += 1
        item = self.items[i]
        if rnd:
            item = WorkItem(f"{item.id}+{rnd}", item.kind, item.messages, item.at_s, item.stream, item.max_tokens,
                            item.group)
        return item, self.start + rnd * self.period + item.at_s

    def done(self) -> bool:
        return self.next >= len(self.items) and not self.loop and self.inflight == 0


SCHEDULE: Schedule | None = None
# A median lateness above this against the arrival schedule means the users could not keep up with it.
LAG_WARN_S = 1.0


def spec_from_options(o: Any) -> WorkloadSpec:
    return WorkloadSpec(
        requests=o.workload_requests, seed=o.workload_seed, data_dir=Path(o.data_dir),
        exact_repeat_share=o.exact_repeat_share, paraphrase_share=o.paraphrase_share, gsm8k_share=o.gsm8k_share,
        session_share=o.session_share, stream_share=o.stream_share, max_tokens=o.max_tokens,
        max_prompt_chars=o.max_prompt_chars, arrival=o.arrival, rate=o.rate, time_scale=o.time_scale, model=o.model)


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    o = environment.parsed_options
    if o is None:
        return
    share = min(max(o.stream_share, 0.0), 1.0)
    # Weights are read when users spawn; an integer split keeps the ratio exact to 1%.
    StreamingChatUser.weight = round(share * 100)
    ChatUser.weight = 100 - StreamingChatUser.weight
    # A class with weight 0 must not be spawned at all (locust drops those only at start-up).
    environment.user_classes[:] = [c for c in environment.user_classes if c.weight > 0]


@events.test_start.add_listener
def _test_start(environment: Any, **_: Any) -> None:
    global SCHEDULE
    spec = spec_from_options(environment.parsed_options)
    items = build(spec)
    SCHEDULE = Schedule(items, environment.parsed_options.loop)
    span = items[-1].at_s if items else 0
    print(f"workload: {len(items)} requests over {span:.0f} s ({spec.arrival} arrivals), "
          f"{json.dumps(mix(items))}", file=sys.stderr)


@events.test_stop.add_listener
def _test_stop(environment: Any, **_: Any) -> None:
    # Locust rewrites the CSV files every CSV_STATS_INTERVAL_SEC and not again at exit: give its writer
    # one more turn so the requests of the last second are in them too (the --json-file stats always are).
    gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + 0.2)
    o = environment.parsed_options
    path = o.report_json or (f"{o.csv_prefix}_requests.json" if getattr(o, "csv_prefix", None) else "")
    if not path or SCHEDULE is None:
        return
    wall = time.perf_counter() - SCHEDULE.start
    spec = spec_from_options(o)
    summary = summarize(SCHEDULE.records, wall)
    out = {"host": environment.host, "spec": {**spec.__dict__, "data_dir": str(spec.data_dir)},
           "summary": summary, "records": [r.to_dict() for r in SCHEDULE.records]}
    lag = summary.get("lag_p50_s")
    if spec.arrival != "none" and lag is not None and lag > LAG_WARN_S:
        # Every user was busy when requests fell due: the run became a closed loop at the users' count,
        # and the arrival pattern asked for was not what the service saw.
        logging.warning("requests went out %.1f s late (median) against the %s schedule: too few users "
                        "(-u) for its rate; raise -u or --time-scale", lag, spec.arrival)
        out["summary"]["lag_warning"] = True
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1, default=str))


def fire(environment: Any, kind: str, name: str, seconds: float | None, length: int = 0,
         error: str | None = None) -> None:
    environment.events.request.fire(
        request_type=kind, name=name, response_time=(seconds or 0.0) * 1000, response_length=length,
        exception=RuntimeError(error) if error else None, context={})


class _ChatUser(HttpUser):
    """Takes the next request of the shared schedule, waits until it is due, sends it."""

    abstract = True
    stream = False
    wait_time = constant(0)

    @task
    def chat(self) -> None:
        sched = SCHEDULE
        nxt = sched.take() if sched else None
        if nxt is None:
            if sched is not None and sched.done() and not sched.quitting and self.environment.runner is not None:
                # The CSV writer refreshes its files every CSV_STATS_INTERVAL_SEC: let it see the last requests.
                sched.quitting = True
                gevent.spawn_later(2 * locust_stats.CSV_STATS_INTERVAL_SEC + 0.5, self.environment.runner.quit)
            gevent.sleep(0.2)
            raise StopUser()
        item, due = nxt
        delay = due - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        rec = Record(item.id, item.kind, self.stream, lag_s=max(0.0, -delay))
        rec.sent_at_s = time.perf_counter() - sched.start
        sched.inflight += 1
        try:
            body = item.body(self.environment.parsed_options.model, stream=self.stream)
            if self.stream:
                body["stream_options"] = {"include_usage": True}
            else:
                body.pop("stream_options", None)
            self.send(body, rec)
        finally:
            sched.inflight -= 1
            sched.records.append(rec)
        if rec.ok:
            fire(self.environment, "ROUTE", rec.tier or "unknown", rec.e2e_s, rec.chunks or len(rec.text))

    def send(self, body: dict[str, Any], rec: Record) -> None:
        raise NotImplementedError


class ChatUser(_ChatUser):
    """Non-streaming chat completions: the HTTP row is the end-to-end latency."""

    weight = 50

    def send(self, body: dict[str, Any], rec: Record) -> None:
        t0 = time.perf_counter()
        with self.client.post(CHAT_PATH, json=body, catch_response=True, name=CHAT_PATH) as resp:
            elapsed = time.perf_counter() - t0
            try:
                data = resp.json()
            except ValueError:
                data = {"error": {"message": f"not JSON: {resp.text[:200]}"}}
            read_whole(rec, resp.status_code, data, elapsed, resp.headers.get(ROUTE_HEADER))
            if rec.ok:
                resp.success()
            else:
                resp.failure(f"{resp.status_code}: {rec.error}")


class StreamingChatUser(_ChatUser):
    """Streamed chat completions, timed chunk by chunk (TTFT, inter-token, end to end)."""

    weight = 50
    stream = True

    def send(self, body: dict[str, Any], rec: Record) -> None:
        env = self.environment
        t0 = time.perf_counter()
        # The HTTP row: with stream=True requests returns at the headers, so this row is time-to-headers.
        with self.client.post(CHAT_PATH, json=body, stream=True, catch_response=True,
                              name=f"{CHAT_PATH} [stream]") as resp:
            rec.status, rec.headers_s = resp.status_code, time.perf_counter() - t0
            reader = StreamReader(rec, t0)
            if resp.status_code != 200:
                rec.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            else:
                try:
                    for line in resp.iter_lines():
                        if not line:
                            continue
                        had_first = rec.ttft_s is not None
                        gap = reader.line(line)
                        if not had_first and rec.ttft_s is not None:
                            fire(env, "STREAM", "ttft", rec.ttft_s)
                        elif gap is not None:
                            fire(env, "STREAM", "inter-token", gap)
                except Exception as exc:  # a broken connection or a bad event: the request failed
                    rec.error = f"{type(exc).__name__}: {exc}"
            reader.close()
            if rec.route is None and resp.headers.get(ROUTE_HEADER):
                rec.tier = resp.headers[ROUTE_HEADER]
            if rec.ok:
                resp.success()
            else:
                resp.failure(rec.error or f"HTTP {resp.status_code}")
        fire(env, "STREAM", "e2e", rec.e2e_s, rec.chunks, None if rec.ok else rec.error)
