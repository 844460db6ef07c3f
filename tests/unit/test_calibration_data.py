"""infopt.calibration_data: prompt splits and mix (real data, skipped without it) and the collection loop
(against a fake HTTP service: no Ray, no models)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from infopt import calibration_data as cd
from infopt import cli

needs_data = pytest.mark.skipif(not (cd.DEFAULT_DATA_DIR / "gsm8k" / "test.jsonl").exists(),
                                reason="../shared/data is absent (the calibration prompts come from it)")


# -- splits and mix ---------------------------------------------------------------------------


def test_split_is_a_pure_function_of_the_id():
    ids = [f"src:{i}" for i in range(4000)]
    first = [cd.split_of(i) for i in ids]
    assert first == [cd.split_of(i) for i in ids]
    share = first.count("calibration") / len(ids)
    assert 0.46 < share < 0.54
    assert {cd.split_of(i, 1.0) for i in ids} == {"calibration"}
    assert {cd.split_of(i, 0.0) for i in ids} == {"evaluation"}
    # A larger calibration share only moves ids from evaluation to calibration.
    assert all(cd.split_of(i, 0.7) == "calibration" for i, s in zip(ids, first, strict=True) if s == "calibration")
    with pytest.raises(ValueError):
        cd.split_of("x", 1.5)


def test_targets_follow_the_shares_and_fill_a_shortfall():
    plenty = dict.fromkeys(cd.SHARES, 1000)
    assert cd.targets(100, plenty) == {"sharegpt": 40, "mt_bench": 20, "gsm8k": 25, "routellm": 15}
    assert sum(cd.targets(7, plenty).values()) == 7
    short = {**plenty, "mt_bench": 5}
    got = cd.targets(100, short)
    assert got["mt_bench"] == 5 and got["sharegpt"] == 55 and sum(got.values()) == 100
    # Asking for more than there is gets everything there is.
    assert cd.targets(50, {"sharegpt": 3, "mt_bench": 2, "gsm8k": 1, "routellm": 0}) == {
        "sharegpt": 3, "mt_bench": 2, "gsm8k": 1, "routellm": 0}


@needs_data
def test_prompts_are_deterministic_and_the_splits_disjoint():
    cal = cd.prompts(n=120, split="calibration", seed=3)
    assert cal == cd.prompts(n=120, split="calibration", seed=3)
    ev = cd.prompts(n=120, split="evaluation", seed=3)
    assert len(cal) == len(ev) == 120
    assert not {r["id"] for r in cal} & {r["id"] for r in ev}
    for r in cal + ev:
        assert r["split"] == cd.split_of(r["id"])
        assert r["source"] == r["id"].split(":")[0]
        assert r["messages"][0]["role"] == "user" and r["messages"][0]["content"]
        assert len(r["messages"][0]["content"]) <= cd.MAX_PROMPT_CHARS
    # Another seed draws other prompts, from the same split.
    other = cd.prompts(n=120, split="calibration", seed=4)
    assert {r["id"] for r in other} != {r["id"] for r in cal}
    assert all(r["split"] == "calibration" for r in other)
    # A larger n draws a superset (a shorter rerun reuses rows already collected).
    assert {r["id"] for r in cal} <= {r["id"] for r in cd.prompts(n=200, split="calibration", seed=3)}


@needs_data
def test_the_mix_follows_the_shares():
    records = cd.prompts(n=120, split="evaluation")
    counts = cd.mix(records)["evaluation"]
    for source, share in cd.SHARES.items():
        assert abs(counts[source] - share * 120) <= 1, counts
    # The sources interleave: an interrupted collection still holds a mix.
    assert len({r["source"] for r in records[:20]}) >= 3
    # MT-Bench has 80 questions, about 40 per split: 20 % of 240 is more, and ShareGPT makes up the rest.
    big = cd.mix(cd.prompts(n=240, split="calibration"))["calibration"]
    assert sum(big.values()) == 240
    assert big["mt_bench"] < 48 and big["sharegpt"] == 96 + 48 - big["mt_bench"]


# -- collection against a fake service ----------------------------------------------------------


def fake_service(calls: list[dict], fail: set[str] = frozenset()):
    """A MockTransport answering chat completions like the service's forced tiers."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append(body)
        prompt = body["messages"][-1]["content"]
        if prompt in fail:
            return httpx.Response(503, json={"error": {"message": "engine unavailable"}})
        analyzer = {"stage": "analyzer", "decision": "scout_first", "latency_ms": 1.0,
                    "detail": {"complexity": 0.12, "task": "chat"}}
        if body["model"] == "scout":
            logprobs = {"content": [
                {"token": t, "logprob": lp,
                 "top_logprobs": [{"token": t, "logprob": lp}, {"token": "x", "logprob": -3.0}]}
                for t, lp in (("Hi", -0.1), ("!", -0.5))]}
            route = {"tier": "scout", "reason": "forced", "confidence": 0.61, "threshold": 0.3,
                     "confidence_method": "quantile", "stages": [analyzer]}
            return httpx.Response(200, json={
                "model": "scout-model", "choices": [{"message": {"content": f"scout: {prompt}"},
                                                     "finish_reason": "stop", "logprobs": logprobs}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2}, "route": route})
        return httpx.Response(200, json={
            "model": "validator-model", "choices": [{"message": {"content": f"validator: {prompt}"},
                                                     "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 128},
            "route": {"tier": "validator", "stages": [analyzer]}})

    return httpx.MockTransport(handler)


def records(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"gsm8k:{i}", "source": "gsm8k", "split": "calibration",
             "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(start, start + n)]


def run_rows(recs, out, calls, fail=frozenset(), concurrency=2):
    async def go():
        async with httpx.AsyncClient(transport=fake_service(calls, fail), base_url="http://svc") as client:
            return await cd.collect_rows(client, recs, out, profile="tiny", max_tokens=64, concurrency=concurrency,
                                         progress=False)

    return asyncio.run(go())


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_row_per_prompt_with_both_answers(tmp_path):
    out, calls = tmp_path / "cal" / "tiny-calibration.jsonl", []
    summary = run_rows(records(3), out, calls)
    assert summary["written"] == 3 and summary["failed"] == 0 and summary["skipped"] == 0
    rows = {r["id"]: r for r in read_rows(out)}
    assert set(rows) == {"gsm8k:0", "gsm8k:1", "gsm8k:2"}
    row = rows["gsm8k:1"]
    assert row["scout"]["text"] == "scout: question 1" and row["validator"]["text"] == "validator: question 1"
    assert row["scout"]["token_logprobs"] == [-0.1, -0.5]
    assert row["scout"]["top_logprobs"][0] == [["Hi", -0.1], ["x", -3.0]]
    assert row["scout"]["confidence"] == 0.61 and row["scout"]["finish_reason"] == "stop"
    assert row["validator"] == {"text": "validator: question 1", "finish_reason": "length",
                                "completion_tokens": 128, "prompt_tokens": 5}
    assert row["analyzer"] == {"complexity": 0.12, "task": "chat"}
    assert row["models"] == {"scout": "scout-model", "validator": "validator-model"}
    assert row["profile"] == "tiny" and row["split"] == "calibration" and row["scout_ms"] >= 0
    # Two greedy requests per prompt, the Scout's with logprobs, neither answered from a cache.
    assert len(calls) == 6
    for body in calls:
        assert body["temperature"] == 0 and body["max_tokens"] == 64 and body["cache"] == {"mode": "bypass"}
    scout = [b for b in calls if b["model"] == "scout"]
    assert len(scout) == 3 and all(b["logprobs"] is True and b["top_logprobs"] == 5 for b in scout)
    assert all("logprobs" not in b for b in calls if b["model"] == "validator")


def test_a_restart_skips_the_ids_already_collected(tmp_path):
    out, calls = tmp_path / "rows.jsonl", []
    run_rows(records(2), out, calls)
    # An interrupt in the middle of a write leaves a torn last line: it is ignored, not glued to the next row.
    with out.open("a") as f:
        f.write('{"id": "gsm8k:9", "sco')
    calls.clear()
    summary = run_rows(records(4), out, calls)
    assert summary["skipped"] == 2 and summary["written"] == 2
    assert sorted({b["messages"][0]["content"] for b in calls}) == ["question 2", "question 3"]
    assert sorted(r["id"] for r in read_rows_tolerant(out)) == ["gsm8k:0", "gsm8k:1", "gsm8k:2", "gsm8k:3"]
    assert cd.done_ids(out) == {"gsm8k:0", "gsm8k:1", "gsm8k:2", "gsm8k:3"}
    calls.clear()
    assert run_rows(records(4), out, calls)["written"] == 0 and not calls


def read_rows_tolerant(path):
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_a_failed_prompt_gets_no_row_and_a_rerun_retries_it(tmp_path):
    out, calls = tmp_path / "rows.jsonl", []
    summary = run_rows(records(3), out, calls, fail={"question 1"}, concurrency=1)
    assert summary["written"] == 2 and summary["failed"] == 1
    assert "gsm8k:1" in summary["errors"][0] and "503" in summary["errors"][0]
    assert cd.done_ids(out) == {"gsm8k:0", "gsm8k:2"}
    calls.clear()
    assert run_rows(records(3), out, calls)["written"] == 1
    assert cd.done_ids(out) == {"gsm8k:0", "gsm8k:1", "gsm8k:2"}


def test_collection_turns_the_cache_off_and_keeps_the_profile():
    args = cd.collection_args("tiny")
    assert args["cache"]["enabled"] is False and args["profile"] == "tiny"
    assert cd.collection_args("tiny", with_analyzer=True)["analyzer"]["enabled"] is True
    assert cd.default_out("tiny", "evaluation").name == "tiny-evaluation.jsonl"


def test_the_cli_subcommand(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_collect(profile, recs, out, max_tokens=128, **kw):
        seen.update(profile=profile, n=len(recs), out=out, max_tokens=max_tokens, **kw)
        return {"written": len(recs), "skipped": 0, "failed": 0, "errors": []}

    monkeypatch.setattr(cd, "prompts", lambda data_dir, n, split, seed, calibration_share: records(n))
    monkeypatch.setattr(cd, "collect", fake_collect)
    out = tmp_path / "x.jsonl"
    assert cli.main(["calibrate", "collect", "--profile", "tiny", "--n", "5", "--out", str(out),
                     "--concurrency", "2"]) == 0
    assert seen["profile"] == "tiny" and seen["n"] == 5 and seen["out"] == out and seen["concurrency"] == 2
    assert seen["with_analyzer"] is None and seen["top_logprobs"] == 5
    assert '"written": 5' in capsys.readouterr().out


# -- the hand labels ------------------------------------------------------------------------------


def test_the_hand_labels_hold_ids_and_reasons_only():
    """tests/data/judge_labels.jsonl (docs/labels.md): calibration-split ids, a label and a short note;
    no prompt or answer text (the shared data is not copied into the repo)."""
    path = cd.REPO / "tests" / "data" / "judge_labels.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "label", "note"}
        assert r["label"] in ("agree", "disagree")
        assert cd.source_of(r["id"]) in cd.SOURCES
        assert cd.split_of(r["id"]) == "calibration"  # the evaluation split stays unseen
        assert 0 < len(r["note"]) <= 160
    labels = [r["label"] for r in rows]
    assert labels.count("agree") and labels.count("disagree")
