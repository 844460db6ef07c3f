"""The load-test harness measures what it claims: scripts/workload.py, locustfile.py and bench.py.

A CI-sized smoke, loopback only: locust runs headless for a few seconds against a fake
OpenAI-compatible server (tests/unit/fake_openai_server.py), and bench.py's measurement,
comparison and report code runs against the same fake in two "modes". The assertions are
about counts and orderings (TTFT <= end to end, chunks-1 inter-token events, route mixes
that add up, ratios against the baseline), never about how fast anything was.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.fake_openai_server import answer, serving

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bench  # noqa: E402
import workload  # noqa: E402

SHARED = workload.DEFAULT_DATA_DIR


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature copy of ../shared/data's layout, so the smoke runs without the shared data."""
    d = tmp_path_factory.mktemp("data")
    (d / "sharegpt").mkdir()
    (d / "sharegpt" / "ShareGPT_V3_filtered_1000.json").write_text(json.dumps(
        [{"id": str(i), "conversations": [{"from": "human", "value": f"ShareGPT prompt number {i}?"}]}
         for i in range(30)]))
    (d / "qqp").mkdir()
    rows = [f"{i}\t{2 * i}\t{2 * i + 1}\tHow do I learn topic {i}?\tWhat is the best way to learn topic {i}?\t1"
            for i in range(10)]
    rows += ["malformed line", "99\t1\t2\tIs A B?\tIs C D?\t0"]
    (d / "qqp" / "qqp_dev.tsv").write_text("\n".join(rows) + "\n")
    (d / "gsm8k").mkdir()
    (d / "gsm8k" / "test.jsonl").write_text("\n".join(
        json.dumps({"question": f"Tom has {i} apples and buys 3 more. How many?", "answer": f"#### {i + 3}"})
        for i in range(10)))
    (d / "mt_bench").mkdir()
    (d / "mt_bench" / "mt_bench_question.jsonl").write_text("\n".join(
        json.dumps({"question_id": i, "category": "math", "turns": [f"Turn one of {i}", f"Turn two of {i}"]})
        for i in range(5)))
    (d / "mt_bench" / "mt_bench_reference_answer_gpt-4.jsonl").write_text("\n".join(
        json.dumps({"question_id": i, "choices": [{"index": 0, "turns": [f"Answer one of {i}", "x"]}]})
        for i in range(5)))
    (d / "traces").mkdir()
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2023-11-16 18:15:{i:02d}.{(i * 137) % 1000:03d}0000,100,20" for i in range(50)]
    (d / "traces" / "AzureLLMInferenceTrace_conv.csv").write_text("\n".join(lines) + "\n")
    return d


# -- workload ---------------------------------------------------------------------------


def test_workload_is_deterministic_and_has_the_asked_mix(data_dir: Path) -> None:
    spec = workload.WorkloadSpec(requests=40, seed=3, data_dir=data_dir, arrival="azure", time_scale=0.5)
    a, b = workload.build(spec), workload.build(spec)
    assert [(w.id, w.messages, w.at_s, w.stream) for w in a] == [(w.id, w.messages, w.at_s, w.stream) for w in b]
    other = workload.build(workload.WorkloadSpec(requests=40, seed=4, data_dir=data_dir))
    assert [w.messages for w in other] != [w.messages for w in a]
    assert len(a) == 40
    m = workload.mix(a)
    assert m["exact_repeat"] == 4 and m["paraphrase"] == m["paraphrase_first"] == 4
    assert m["gsm8k"] == 6 and m["session_turn1"] == m["session_turn2"] == 2
    assert sum(m.values()) == 40
    pos = {w.id: i for i, w in enumerate(a)}
    by_id = {w.id: w for w in a}
    for i, w in enumerate(a):
        if w.kind == "exact_repeat":  # the same bytes as an earlier request
            assert pos[w.group] < i and by_id[w.group].messages == w.messages
        if w.kind in ("paraphrase", "session_turn2"):
            first = [x for x in a if x.group == w.group and x.kind != w.kind]
            assert len(first) == 1 and pos[first[0].id] < i
            if w.kind == "session_turn2":  # the session's turns share a prefix
                assert w.messages[:2] == first[0].messages
    ats = [w.at_s for w in a]
    assert ats == sorted(ats) and ats[0] == 0
    slow = workload.build(workload.WorkloadSpec(requests=40, seed=3, data_dir=data_dir, arrival="azure"))
    assert [w.at_s for w in slow][-1] == pytest.approx(2 * ats[-1], rel=1e-6)


def test_a_held_out_workload_has_no_prompt_calibration_reads(data_dir: Path) -> None:
    sys.path.insert(0, str(REPO))
    from infopt.calibrate import load_qqp, qqp_split
    from infopt.calibration_data import split_of

    seen = {f"ShareGPT prompt number {i}?" for i in range(30) if split_of(f"sharegpt:{i}") == "calibration"}
    seen |= {f"Tom has {i} apples and buys 3 more. How many?" for i in range(10)
             if split_of(f"gsm8k:{i}") == "calibration"}
    seen |= {f"Turn one of {i}" for i in range(5) if split_of(f"mt_bench:{i}") == "calibration"}
    cache_seen = {p.q1 for p in qqp_split(load_qqp(data_dir / "qqp" / "qqp_dev.tsv"))["calibration"]}
    assert seen and cache_seen  # the miniature data has prompts on both sides of each split
    spec = workload.WorkloadSpec(requests=16, seed=1, data_dir=data_dir, exact_repeat_share=0, paraphrase_share=0.1,
                                 gsm8k_share=0.2, session_share=0.2, held_out=True)
    items = workload.build(spec)
    firsts = {w.messages[-1]["content"] if w.kind != "session_turn1" else w.messages[1]["content"] for w in items
              if w.kind != "session_turn2"}
    assert len(items) == 16 and not firsts & seen and not firsts & cache_seen
    # The same spec drawing from every prompt does meet them (with this seed), so the filter is what keeps them out.
    everything = workload.build(workload.WorkloadSpec(**{**spec.__dict__, "held_out": False, "requests": 40}))
    assert {w.messages[-1]["content"] for w in everything} & (seen | cache_seen)


def test_workload_arrivals_and_validation(data_dir: Path) -> None:
    const = workload.build(workload.WorkloadSpec(requests=10, data_dir=data_dir, arrival="constant", rate=2.0))
    assert [w.at_s for w in const] == [i / 2 for i in range(10)]
    assert {w.at_s for w in workload.build(workload.WorkloadSpec(requests=10, data_dir=data_dir,
                                                                 arrival="none"))} == {0.0}
    with pytest.raises(ValueError):
        workload.build(workload.WorkloadSpec(requests=10, data_dir=data_dir, paraphrase_share=0.6))
    with pytest.raises(workload.DataMissingError):
        workload.build(workload.WorkloadSpec(requests=10, data_dir=data_dir / "nowhere"))


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data absent")
def test_workload_from_the_shared_data() -> None:
    items = workload.build(workload.WorkloadSpec(requests=200, seed=0))
    assert len(items) == 200 and len({w.id for w in items}) == 200
    assert all(len(m["content"]) <= 1500 for w in items for m in w.messages if m["role"] == "user")
    assert items[-1].at_s > 0


# -- locust -----------------------------------------------------------------------------


def _locust(base: str, out: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("locust")
    cmd = [str(exe), "-f", str(REPO / "scripts" / "locustfile.py"), "--headless", "--host", base,
           "-u", "6", "-r", "6", "-t", "30s", "--stop-timeout", "5", "--only-summary",
           "--csv", str(out / "load"), "--html", str(out / "load.html"), "--json-file", str(out / "load_stats"),
           "--data-dir", str(data_dir), "--workload-requests", "24", "--arrival", "none", "--max-tokens", "8",
           *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFOPT_LOAD_")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env, cwd=REPO)


def test_locust_measures_streams_and_routes(tmp_path: Path, data_dir: Path) -> None:
    with serving({"mode": "tiered"}) as base:
        proc = _locust(base, tmp_path, data_dir, "--stream-share", "0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("load_stats.csv", "load_failures.csv", "load.html", "load_stats.json", "load_requests.json"):
        assert (tmp_path / name).exists(), name
    report = json.loads((tmp_path / "load_requests.json").read_text())
    recs = report["records"]
    # The schedule ran out and stopped the run: every request was sent exactly once.
    assert len(recs) == 24 and len({r["id"] for r in recs}) == 24
    assert all(r["ok"] for r in recs), [r["error"] for r in recs if not r["ok"]]
    streams = [r for r in recs if r["stream"]]
    assert streams and len(streams) < len(recs)
    for r in streams:
        assert 0 <= r["headers_s"] <= r["ttft_s"] <= r["e2e_s"]
        assert len(r["itl_s"]) == r["chunks"] - 1 and r["chunks"] == r["completion_tokens"]
        assert r["ttft_s"] + sum(r["itl_s"]) <= r["e2e_s"] + 1e-9
    # Every answer is the fake's, and its tier came from the route object.
    items = {w.id: w for w in workload.build(workload.WorkloadSpec(requests=24, data_dir=data_dir, arrival="none",
                                                                   max_tokens=8))}
    for r in recs:
        tokens, tier = answer(items[r["id"]].messages, 8, "tiered")
        assert r["text"] == "".join(tokens) and r["tier"] == tier
    summary = report["summary"]
    assert sum(summary["route_mix"].values()) == summary["requests"] == 24
    assert summary["streams"] == len(streams)

    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader((tmp_path / "load_stats.csv").open())}
    count = {k: int(v["Request Count"]) for k, v in rows.items()}
    assert count[("STREAM", "ttft")] == count[("STREAM", "e2e")] == len(streams)
    assert count[("STREAM", "inter-token")] == sum(r["chunks"] - 1 for r in streams)
    assert count[("POST", "/v1/chat/completions [stream]")] == len(streams)
    assert count[("POST", "/v1/chat/completions")] == 24 - len(streams)
    assert sum(c for (t, _), c in count.items() if t == "ROUTE") == 24
    assert {n for (t, n) in count if t == "ROUTE"} == set(summary["route_mix"])
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0
    stats = json.loads((tmp_path / "load_stats.json").read_text())
    assert {s["name"] for s in stats} >= {"ttft", "inter-token", "e2e"}


def test_locust_follows_a_constant_arrival_schedule_and_warns_when_it_cannot(tmp_path: Path, data_dir: Path) -> None:
    """Open loop: requests go out when the schedule says (not earlier); with too few users for the rate
    the run says so instead of silently becoming a closed loop."""
    def run(out: Path, users: str, delay_s: float) -> tuple[subprocess.CompletedProcess, dict]:
        out.mkdir()
        with serving({"mode": "tiered", "delay_s": delay_s}) as base:
            proc = _locust(base, out, data_dir, "--arrival", "constant", "--rate", "10", "--workload-requests", "12",
                           "-u", users, "-r", users)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc, json.loads((out / "load_requests.json").read_text())

    proc, kept = run(tmp_path / "kept", "6", 0.0)
    recs = sorted(kept["records"], key=lambda r: r["sent_at_s"])
    assert len(recs) == 12
    # 10/s: the i-th request is due at i/10 s; it is never sent before that, and barely after.
    for i, r in enumerate(recs):
        assert r["sent_at_s"] >= i / 10 - 0.05, (i, r["sent_at_s"])
    assert kept["summary"]["lag_p50_s"] < 0.5 and "lag_warning" not in kept["summary"]
    assert "too few users" not in proc.stderr
    proc, behind = run(tmp_path / "behind", "1", 0.4)  # one user, 0.4 s a request, one due every 0.1 s
    assert behind["summary"]["lag_p50_s"] > 1.0 and behind["summary"]["lag_warning"] is True
    assert "too few users" in proc.stderr


def test_locust_only_non_streaming_users(tmp_path: Path, data_dir: Path) -> None:
    with serving({"mode": "validator-only"}) as base:
        proc = _locust(base, tmp_path, data_dir, "--stream-share", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = json.loads((tmp_path / "load_requests.json").read_text())["records"]
    assert len(recs) == 24 and not any(r["stream"] for r in recs)
    assert {r["tier"] for r in recs} == {"validator"}


# -- bench.py ---------------------------------------------------------------------------


def test_bench_measures_compares_and_reports(tmp_path: Path, data_dir: Path) -> None:
    spec = workload.WorkloadSpec(requests=30, seed=1, data_dir=data_dir, arrival="none", max_tokens=8)
    items = workload.build(spec)
    state = {"mode": bench.BASELINE}
    results = {}
    with serving(state) as base:
        for mode in (bench.BASELINE, "tiered"):
            state["mode"] = mode
            probe = bench.CpuProbe(lambda: [os.getpid()])
            results[mode] = bench.measure(base, items, concurrency=3, probe=probe)
            results[mode]["label"] = mode
    for mode, res in results.items():
        recs = res["records"]
        assert res["requests"] == res["ok"] == len(recs) == 30
        assert sum(res["route_mix"].values()) == 30
        assert res["validator_cpu_s"] is not None and res["validator_cpu_s"] >= 0
        for r in recs:
            assert r["ttft_s"] <= r["e2e_s"]
            if r["stream"]:
                assert len(r["itl_s"]) == r["chunks"] - 1
        expect = [answer(w.messages, 8, mode) for w in items]
        assert [r["text"] for r in recs] == ["".join(t) for t, _ in expect]
        assert res["validator_tokens"] == sum(len(t) for t, tier in expect if tier == "validator")
    assert results[bench.BASELINE]["route_mix"] == {"validator": 30}

    rows = {r["mode"]: r for r in bench.compare(results)}
    base_row, tiered = rows[bench.BASELINE], rows["tiered"]
    assert base_row["fidelity"] == 1.0
    assert all(v == pytest.approx(1.0) for k, v in base_row["x"].items() if math.isfinite(v)), base_row["x"]
    same = sum(answer(w.messages, 8, "tiered")[0] == answer(w.messages, 8, bench.BASELINE)[0] for w in items)
    assert tiered["fidelity"] == pytest.approx(same / 30) and tiered["fidelity_detail"]["compared"] == 30
    from tests.unit.fakes import FakeEmbedder

    judged = {r["mode"]: r for r in bench.compare(
        results, judge=bench.Judge(lambda texts: [FakeEmbedder.vector(t) for t in texts]))}
    assert judged[bench.BASELINE]["equivalent"] == 1.0
    assert tiered["fidelity"] <= judged["tiered"]["equivalent"] <= 1.0  # identical answers are equivalent too
    assert "| judged equivalent |" in bench.table(list(judged.values()))
    assert tiered["x"]["validator_tokens"] == pytest.approx(
        results["tiered"]["validator_tokens"] / results[bench.BASELINE]["validator_tokens"])
    assert tiered["x"]["validator_busy_s"] == pytest.approx(
        results["tiered"]["validator_busy_s"] / results[bench.BASELINE]["validator_busy_s"])
    assert tiered["x"]["p50_s"] == pytest.approx(results["tiered"]["p50_s"] / results[bench.BASELINE]["p50_s"])

    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text("# Benchmarks\n\n## Someone else's section\n\nkeep me\n")
    run = {"profile": "tiny", "scout": "s", "validator": "v", "date": "2026-01-01", "machine": "test",
           "workload_text": bench.workload_text(spec, items, 3), "bench_wall_s": 60.0,
           "rows": bench.compare(results), "failed_modes": {"tiered+cache": "RuntimeError: boom"}}
    bench.report(run, results, tmp_path / "reports", docs, tmp_path / "docs" / "img")
    first = docs.read_text()
    assert "keep me" in first and first.count(bench.START) == first.count(bench.END) == 1
    assert "| `gpu-a100x4` | all | not measured |" in first
    assert "| tiered | " in first and "(100%)" in first
    assert "`tiered+cache`: not measured, the service did not start (RuntimeError: boom)" in first
    for kind in ("latency", "routes", "savings"):
        assert (tmp_path / "docs" / "img" / f"bench_tiny_{kind}.png").stat().st_size > 1000
    assert json.loads((tmp_path / "reports" / "bench_tiny.json").read_text())["profile"] == "tiny"
    # A GPU profile's run fills its rows and keeps tiny's; the section is replaced, not repeated.
    bench.report({**run, "profile": "gpu-a100x4", "machine": "gpu box"}, results, tmp_path / "reports", docs,
                 tmp_path / "docs" / "img")
    second = docs.read_text()
    assert second.count(bench.START) == 1 and "keep me" in second
    assert "| `gpu-a100x4` | all | not measured |" not in second
    assert "| `tiny` | tiered |" in second and "| `gpu-a100x4` | tiered |" in second
    assert "| `gpu-h100x8` | all | not measured |" in second
    assert "### Profile `tiny`" in second and "### Profile `gpu-a100x4`" in second  # both in full
    assert bench.kept_results(second)["tiny"]["rows"][1]["mode"] == "tiered"
    # --render-only rebuilds a profile's section and plots from its saved JSON, measuring nothing.
    (tmp_path / "docs" / "img" / "bench_tiny_routes.png").unlink()
    notes = tmp_path / "notes.md"
    notes.write_text("- The Scout answered the easy half.\n")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--render-only", "--profile", "tiny",
                           "--out", str(tmp_path / "reports"), "--docs", str(docs), "--img",
                           str(tmp_path / "docs" / "img"), "--notes", str(notes)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    third = docs.read_text()
    assert third.count(bench.START) == 1 and "keep me" in third and "### Profile `gpu-a100x4`" in third
    assert "- The Scout answered the easy half." in third
    # The reading stays with its profile when another profile's run rewrites the section.
    bench.report({**run, "profile": "gpu-a100x4", "machine": "gpu box"}, results, tmp_path / "reports", docs,
                 tmp_path / "docs" / "img")
    assert "- The Scout answered the easy half." in docs.read_text()
    assert (tmp_path / "docs" / "img" / "bench_tiny_routes.png").exists()


def test_bench_modes_and_overrides() -> None:
    modes = {m.key: m for m in bench.all_modes()}
    assert list(modes)[:4] == [bench.BASELINE, "tiered", "tiered+cache", "tiered+cache+verified"]
    from serving.config import load_profile

    base = load_profile("tiny").model_dump(mode="json")
    for m in modes.values():
        args = bench.merge(base, m.overrides)
        assert args["scout"] == base["scout"]  # overrides touch only what the mode changes
    assert bench.merge(base, modes[bench.BASELINE].overrides)["tiering"]["enabled"] is False
    verified = bench.merge(base, modes["tiered+cache+verified"].overrides)
    assert verified["tiering"]["verified_escalation"] is True and verified["cache"]["enabled"] is True
    spec = modes["tiered+cache+verified+speculative"]
    # Only the last mode speculates; it differs from the one before only by that.
    for m in list(modes.values())[:-1]:
        assert bench.merge(base, m.overrides)["validator"]["speculative"]["method"] == "none"
    on = bench.merge(base, spec.overrides)
    assert on["validator"]["speculative"]["method"] != "none"
    before = bench.merge(base, modes["tiered+cache+verified"].overrides)
    on["validator"].pop("speculative")
    before["validator"].pop("speculative")
    assert on == before


def test_the_calibrated_mode_comes_with_a_calibration_file_and_the_scout_table_reads_the_guarantee() -> None:
    from serving.config import load_profile, profile_args

    modes = {m.key: m for m in bench.all_modes(profile_args("tiny"), "tiny")}  # cluster/calibration/tiny.json
    assert list(modes)[-2:] == ["tiered+calibrated", "tiered+cache+verified+speculative"]
    calibrated = modes["tiered+calibrated"].overrides
    assert calibrated["quality"]["calibration"] == "calibration/tiny.json" and calibrated["cache"]["enabled"] is False
    assert calibrated["validator"]["speculative"]["method"] == "none"
    assert "tiered+calibrated" not in {m.key for m in bench.all_modes(None, "no-such-profile")}
    # Every other mode decides by the raw confidence, even for a profile that names its calibration (laptop).
    laptop = load_profile("laptop").model_dump(mode="json")
    assert laptop["quality"]["calibration"] is not None
    for m in bench.all_modes(profile_args("laptop"), "laptop"):
        named = bench.merge(laptop, m.overrides)["quality"]["calibration"]
        assert named == ("calibration/laptop.json" if m.key == "tiered+calibrated" else None), m.key
    fid = {"by_tier": {"scout": {"identical": 290, "equivalent": 299, "compared": 300}, "validator": {}}}
    sc = bench.scout_served(fid, 600)
    assert (sc["served"], sc["disagreements"], sc["coverage"]) == (300, 1, 0.5)
    assert sc["rate"] == pytest.approx(1 / 300) and 0.01 < sc["upper"] < 0.02  # 1 in 300 does not certify 1%
    assert bench.scout_served({"by_tier": {}}, 10)["upper"] == 1.0  # nothing served: nothing known
    row = {"mode": "tiered+calibrated", "scout": sc, "x": {"validator_tokens": 0.5}, "ledger_validator_ratio": 0.4}
    assert "| tiered+calibrated | 300 (50%) | 1 | 0.3% | 1.6% | 0.50x | 0.40 |" in bench.scout_table([row])


def test_the_judge_reads_same_meaning_and_gsm8k_final_numbers() -> None:
    from tests.unit.fakes import FakeEmbedder

    judge = bench.Judge(lambda texts: [FakeEmbedder.vector(t) for t in texts], threshold=0.9)
    verdicts = judge([
        ("sharegpt", "Paris is the capital.", "Paris is the capital."),  # identical
        ("sharegpt", "The capital is Paris", "Paris is the capital."),  # same words, other order: similar
        ("sharegpt", "Bananas are yellow fruit.", "Paris is the capital."),  # another meaning
        ("gsm8k", "48 / 2 = 24 in May, so 48 + 24 = 72.", "She sold 72 clips."),  # same final number
        ("gsm8k", "48 + 24 = 1,200.", "The answer is 1200"),  # "1,200." is 1200
        ("gsm8k", "48 + 24 = 71", "She sold 72 clips."),  # another final number
    ])
    assert [ok for ok, _ in verdicts] == [True, True, False, True, True, False]
    assert verdicts[0][1] == 1.0 and verdicts[1][1] >= 0.9 and verdicts[2][1] < 0.9
    assert verdicts[3][1] is None  # judged by the number, not embedded
    assert bench.final_number("no figures here") is None and bench.final_number("x = 3.0.") == "3"

    def rec(i: str, text: str, kind: str = "sharegpt", tier: str = "scout") -> dict:
        return {"id": i, "ok": True, "text": text, "kind": kind, "tier": tier}

    base = [rec("a", "Paris is the capital."), rec("b", "She sold 72 clips.", "gsm8k"), rec("c", "Hello there.")]
    got = [rec("a", "The capital is Paris"), rec("b", "So 48 + 24 = 72", "gsm8k"), rec("c", "Hello there.")]
    fid = bench.fidelity(got, base, judge)
    assert (fid["identical"], fid["equivalent"], fid["compared"]) == (1, 3, 3)
    assert fid["share"] == pytest.approx(1 / 3) and fid["equivalent_share"] == 1.0
    assert fid["by_tier"]["scout"] == {"identical": 1, "equivalent": 3, "compared": 3}
    no_judge = bench.fidelity(got, base)  # without a judge: identical only, 'judged equivalent' n/a
    assert no_judge["identical"] == 1 and math.isnan(no_judge["equivalent_share"])


def test_gpu_profiles_report_validator_gpu_seconds() -> None:
    def res(busy: float, gpus: int) -> dict:
        return {"records": [], "requests": 0, "ok": 0, "errors": 0, "route_mix": {}, "validator_busy_s": busy,
                "validator_tokens": 1, "p50_s": 1.0, "p99_s": 1.0, "ttft_p50_s": 1.0, "throughput_rps": 1.0,
                "validator_gpus": gpus}

    rows = bench.compare({bench.BASELINE: res(10.0, 2), "tiered": res(4.0, 2)})
    assert [r["validator_gpu_s"] for r in rows] == [20.0, 8.0]
    assert rows[1]["x"]["validator_gpu_s"] == pytest.approx(0.4)
    assert "Validator GPU-s" in bench.table(rows) and "| 0.40x (8.00 s) |" in bench.table(rows)
    cpu = bench.compare({bench.BASELINE: res(10.0, 0)})
    assert cpu[0]["validator_gpu_s"] is None and "GPU-s" not in bench.table(cpu)
