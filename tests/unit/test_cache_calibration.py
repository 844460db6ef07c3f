"""The semantic cache's calibrated threshold (`infopt calibrate cache`): the choice, the file, serving's use of it.

Synthetic similarities and fakes only: no embedder model, no QQP file (a tiny one is written here).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math

import numpy as np
import pytest

from infopt.calibrate import (
    LabelledSplit,
    QQPPair,
    calibrate_cache,
    choose_cache_threshold,
    guards_pass,
    qqp_split,
    run_cache,
    run_fit,
)
from serving.cache.edge import EdgeStore
from serving.cache.keys import cache_key
from serving.cache.semantic import CachedAnswer, SemanticCache
from serving.config import AppConfig, CacheConfig, load_profile
from serving.engines.base import GenerationRequest
from serving.pipeline import pipeline_from_config
from serving.policy.cache import Candidate, judge_candidate, normalize, threshold_in_force
from serving.quality.calibration import (
    FEATURES,
    CacheCalibration,
    Calibration,
    CalibrationFormatError,
    CalibrationMismatchError,
    EmbedderIdentity,
    Logistic,
    ShortcutCalibration,
)
from tests.conftest import REPO
from tests.unit.fakes import BindRecorder, FakeEmbedder, FakeEngine

EMBEDDER = EmbedderIdentity(model="all-minilm-l6-v2", dimension=384, sha256="ab" * 32)


def synthetic(n: int, seed: int, vetoed: int = 0, name: str = "calibration") -> LabelledSplit:
    """Duplicates at cosine 0.85-1.0, non-duplicates at 0.5-0.95: no false hit at 0.95 and above, many below.
    `vetoed` extra non-duplicates at 0.99 that a guard vetoes."""
    rng = np.random.default_rng(seed)
    dup = rng.random(n) < 0.4
    sims = np.where(dup, rng.uniform(0.85, 1.0, n), rng.uniform(0.5, 0.95, n))
    ok = np.ones(n, dtype=bool)
    if vetoed:
        sims = np.concatenate([sims, np.full(vetoed, 0.99)])
        dup = np.concatenate([dup, np.zeros(vetoed, dtype=bool)])
        ok = np.concatenate([ok, np.zeros(vetoed, dtype=bool)])
    return LabelledSplit(name, sims, dup, ok)


def scout_calibration() -> Calibration:
    model = Logistic(features=list(FEATURES), mean=[0.0] * 7, scale=[1.0] * 7, coef=[0.0] * 7, intercept=0.0)
    return Calibration(version="t-2026-12-02-00000000", created="2026-12-02", profile="t", scout_model="small",
                       validator_model="large", data={"n": 1}, judge="identical", epsilon=0.01, delta=0.05,
                       scout=ShortcutCalibration(model=model, bound=None, coverage=0.0, served=0, disagreements=0,
                                                 upper=1.0))


def cache_part(threshold: float | None = 0.9, model: str = "all-minilm-l6-v2", dimension: int = 384,
               guards: bool = True) -> CacheCalibration:
    return CacheCalibration(version="cache-2026-12-10-0a1b2c3d", created="2026-12-10",
                            embedder=EmbedderIdentity(model=model, dimension=dimension), guards=guards,
                            data={"file": "qqp/qqp_dev.tsv"}, epsilon=0.01, delta=0.05, threshold=threshold,
                            served=400, false_hits=0, upper=0.0075, recall=0.3)


# -- the choice --------------------------------------------------------------------------------------------------


def test_ltt_chooses_the_lowest_threshold_whose_bound_passes_and_ignores_vetoed_pairs():
    cal = synthetic(4000, 0, vetoed=50)
    choice = choose_cache_threshold(cal.sims, cal.dup, cal.ok, epsilon=0.01, delta=0.05)
    assert choice.threshold is not None and 0.945 <= choice.threshold <= 0.955
    chosen = choice.chosen
    assert chosen.upper <= 0.01 and chosen.served >= 299
    below = next(p for p in choice.curve if p.threshold < choice.threshold)  # the next, looser candidate
    assert below.p_value > 0.05 and below.upper > 0.01  # it fails: the sequence stops at the chosen one
    # The 50 vetoed non-duplicates at 0.99 are never served: counted, they would certify nothing.
    unguarded = choose_cache_threshold(cal.sims, cal.dup, np.ones_like(cal.ok), epsilon=0.01, delta=0.05)
    assert unguarded.threshold is None or unguarded.threshold > choice.threshold

    part = calibrate_cache(cal, synthetic(4000, 1, name="evaluation"), embedder=EMBEDDER, guards=True,
                           epsilon=0.01, delta=0.05, data={"sha256": "cd" * 32})
    assert part.threshold == choice.threshold and part.false_hits == 0 and part.upper <= 0.01
    expected_recall = ((cal.sims >= part.threshold) & cal.ok & cal.dup).sum() / cal.dup.sum()
    assert part.recall == pytest.approx(expected_recall, abs=1e-6)
    ev = part.evaluation
    assert ev is not None and ev.split == "evaluation" and ev.false_hits == 0 and 0.25 < ev.recall < 0.45
    assert len(part.curve) in (31, 32) and part.threshold in [p.threshold for p in part.curve]  # hundredths + chosen
    assert part.version.startswith("cache-")


def test_too_few_pairs_certify_no_threshold_and_serving_keeps_the_configured_one(caplog):
    cal = synthetic(500, 2)  # ~200 duplicates: fewer than the 299 served pairs 1% at 95% needs
    part = calibrate_cache(cal, None, embedder=EMBEDDER, guards=True, epsilon=0.01, delta=0.05, data={})
    assert part.threshold is None and part.served == 0 and part.upper == 1.0
    calibration = scout_calibration().with_cache(part.model_copy(update={"embedder": EmbedderIdentity(
        model="all-minilm-l6-v2", dimension=384)}))
    with caplog.at_level(logging.WARNING, logger="serving.policy.cache"):
        config, reported = threshold_in_force(CacheConfig(enabled=True, similarity_threshold=0.95), calibration)
    assert config.similarity_threshold == 0.95
    assert reported is not None and reported.cache is None and reported.version == "t-2026-12-02-00000000"
    assert "certified no similarity threshold" in caplog.text


# -- the file ----------------------------------------------------------------------------------------------------


def test_a_cache_part_for_another_embedder_or_other_guards_is_refused():
    calibration = scout_calibration().with_cache(cache_part(0.9, model="other-embedder"))
    with pytest.raises(CalibrationMismatchError, match="other-embedder"):
        threshold_in_force(CacheConfig(enabled=True), calibration)
    with pytest.raises(CalibrationMismatchError, match="768-d"):
        threshold_in_force(CacheConfig(enabled=True), scout_calibration().with_cache(cache_part(dimension=768)))
    with pytest.raises(CalibrationMismatchError, match="guards"):
        threshold_in_force(CacheConfig(enabled=True, guards=False), scout_calibration().with_cache(cache_part()))
    # The cache off: its part is not in force and nothing is checked.
    config, reported = threshold_in_force(CacheConfig(enabled=False), calibration)
    assert config.similarity_threshold == 0.95 and reported.cache is None


def test_old_files_load_as_format_1_and_later_formats_are_refused(tmp_path):
    old = json.loads(scout_calibration().model_dump_json())
    del old["format"], old["cache"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = Calibration.load(tmp_path / "old.json")
    assert loaded.format == 1 and loaded.cache is None and loaded.scout.bound is None
    extended = loaded.with_cache(cache_part())
    extended.save(tmp_path / "new.json")
    again = Calibration.load(tmp_path / "new.json")
    assert again.format == 2 and again.version == "t-2026-12-02-00000000+cache-2026-12-10-0a1b2c3d"
    assert again.scout == loaded.scout and again.scout_version == loaded.version
    assert again.with_cache(None).version == loaded.version
    (tmp_path / "later.json").write_text(json.dumps({**old, "format": 3}))
    with pytest.raises(CalibrationFormatError, match="later"):
        Calibration.load(tmp_path / "later.json")


# -- the data and the cache's own decision -----------------------------------------------------------------------


def test_the_split_keeps_every_question_on_one_side():
    pairs = [QQPPair(str(i), f"q{i}", f"q{i + 1}", "a", "b", False) for i in range(0, 40, 2)]
    pairs += [QQPPair("x1", "q0", "q100", "a", "c", True), QQPPair("x2", "q100", "q7", "c", "d", True)]
    split = qqp_split(pairs)
    again = qqp_split(list(reversed(pairs)))  # a pure function of the ids, whatever the order
    assert {k: sorted(p.id for p in v) for k, v in split.items()} == {k: sorted(p.id for p in v)
                                                                      for k, v in again.items()}
    sides = {k: {q for p in v for q in (p.qid1, p.qid2)} for k, v in split.items()}
    assert not sides["calibration"] & sides["evaluation"]
    assert len(split["calibration"]) + len(split["evaluation"]) == len(pairs)
    assert split["calibration"] and split["evaluation"]


def test_served_pairs_are_exactly_what_the_cache_would_serve():
    """The calibration counts a pair served iff `judge_candidate` (the cache's own rule) serves it."""
    pairs = [QQPPair("1", "a", "b", "How do I turn on  the lights?", "How do I turn off the lights?", False),
             QQPPair("2", "c", "d", "What is 15% of 80?", "What is 20% of 80?", False),
             QQPPair("3", "e", "f", "How can I learn Python fast?", "How can I learn Python quickly?", True),
             QQPPair("4", "g", "h", "Who was the president?", "Who was the first president?", False)]
    sims = np.array([0.97, 0.96, 0.93, 0.99])
    for guards in (True, False):
        ok = guards_pass(CacheConfig(guards=guards), pairs)
        for t in (0.9, 0.95, 0.98):
            config = CacheConfig(guards=guards, similarity_threshold=t)
            expected = [judge_candidate(config, s, normalize(p.q1), normalize(p.q2))[0] is Candidate.SERVE
                        for p, s in zip(pairs, sims, strict=True)]
            assert list(ok & (sims >= t)) == expected
    assert list(guards_pass(CacheConfig(), pairs)) == [False, False, True, False]


# -- serving -----------------------------------------------------------------------------------------------------


def app_config(tmp_path, calibration: Calibration | None, **cache) -> AppConfig:
    path = None
    if calibration is not None:
        path = tmp_path / "cal.json"
        calibration.save(path)
    return AppConfig(profile="t", cache_dir=tmp_path, scout={"model": "small"}, validator={"model": "large"},
                     quality={"calibration": path}, cache={"enabled": True, "similarity_threshold": 0.95, **cache})


def test_pipeline_from_config_applies_the_calibrated_threshold_and_the_trace_says_so(tmp_path):
    scout, validator = FakeEngine("small", ["a"]), FakeEngine("large", ["b"])
    calibrated = pipeline_from_config(app_config(tmp_path, scout_calibration().with_cache(cache_part(0.9))),
                                      scout, validator)
    assert calibrated.cache_config.similarity_threshold == 0.9
    assert calibrated.escalation.version == "t-2026-12-02-00000000+cache-2026-12-10-0a1b2c3d"
    assert calibrated.escalation.calibration.scout is not None

    uncertified = pipeline_from_config(app_config(tmp_path, scout_calibration().with_cache(cache_part(None))),
                                       scout, validator)
    assert uncertified.cache_config.similarity_threshold == 0.95
    assert uncertified.escalation.version == "t-2026-12-02-00000000"

    plain = pipeline_from_config(app_config(tmp_path, None), scout, validator)
    assert plain.cache_config.similarity_threshold == 0.95 and plain.escalation.version == "uncalibrated"

    with pytest.raises(CalibrationMismatchError):
        pipeline_from_config(app_config(tmp_path, scout_calibration().with_cache(cache_part(0.9, model="x"))),
                             scout, validator)

    # A file with the cache part only: the threshold applies, the Scout stays uncalibrated.
    only = Calibration(version="t+cache-2026-12-10-0a1b2c3d", created="2026-12-10", profile="t", epsilon=0.01,
                       delta=0.05, cache=cache_part(0.9))
    cache_only = pipeline_from_config(app_config(tmp_path, only), scout, validator)
    assert cache_only.cache_config.similarity_threshold == 0.9 and cache_only.escalation.calibration is None


def test_the_cache_deployment_gets_the_calibrated_threshold(tmp_path, monkeypatch):
    from deployments import app as app_module

    deployment = BindRecorder()
    monkeypatch.setattr(app_module, "SemanticCacheDeployment", deployment)
    config = app_config(tmp_path, scout_calibration().with_cache(cache_part(0.9)))
    assert app_module.build_cache(config, object()) == "bound-app"
    (_, bound_config, engines), _ = deployment.binds[-1]
    assert bound_config.cache.similarity_threshold == 0.9 and config.cache.similarity_threshold == 0.95
    assert engines is None
    with pytest.raises(CalibrationMismatchError):
        app_module.build_cache(app_config(tmp_path, scout_calibration().with_cache(cache_part(0.9, model="x"))),
                               object())


def test_the_semantic_cache_serves_at_the_calibrated_threshold(tmp_path):
    cached, asked = "what is the capital city of france", "what is the capital city of france please"
    sim = float(np.dot(FakeEmbedder.vector(cached), FakeEmbedder.vector(asked)))
    assert 0.85 < sim < 0.95
    calibration = scout_calibration().with_cache(cache_part(0.85, model="fake", dimension=FakeEmbedder.dimension))

    async def decision(config: CacheConfig) -> str:
        cache = SemanticCache(EdgeStore(tmp_path / str(config.similarity_threshold), FakeEmbedder.dimension),
                              FakeEmbedder(), config)
        for question in (cached, asked):
            req = GenerationRequest(messages=[{"role": "user", "content": question}], temperature=0)
            key = cache_key(req, model="auto", namespace="default", fingerprint="fp")
            if question == cached:
                await cache.admit(key, CachedAnswer("Paris.", "stop", 5, 2, "validator", "large"))
            else:
                found = await cache.lookup(key)
        await cache.close()
        return found.decision

    configured = CacheConfig(enabled=True, embedder={"model": "fake", "dimension": FakeEmbedder.dimension})
    in_force, _ = threshold_in_force(configured, calibration)
    assert asyncio.run(decision(configured)) == "miss"
    assert asyncio.run(decision(in_force)) == "semantic_hit"


# -- the command -------------------------------------------------------------------------------------------------


def test_run_cache_extends_the_file_keeps_the_scout_part_and_reports(tmp_path):
    data = tmp_path / "data" / "qqp"
    data.mkdir(parents=True)
    lines = ["0\t1\t2\tmalformed line"]
    for i in range(2000):
        dup = i % 5 < 2
        lines.append(f"{i}\t{2 * i}\t{2 * i + 1}\tquestion number {i} about topic\t"
                     f"{'question number ' + str(i) + ' about topic' if dup else 'another thing entirely ' + str(i)}"
                     f"\t{int(dup)}")
    (data / "qqp_dev.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "cal.json"
    scout_calibration().save(out)

    def embed(texts):  # duplicates are the same text: cosine 1; others orthogonal-ish
        return [FakeEmbedder.vector(t) for t in texts]

    config = AppConfig(profile="t", cache_dir=tmp_path, scout={"model": "small"}, validator={"model": "large"},
                       cache={"enabled": True, "guards": False, "embedder": {"model": "fake", "dimension": 64}})
    written_cal, report = run_cache(config, out, data_dir=tmp_path / "data", embedder_path=str(tmp_path / "nowhere"),
                                    epsilon=0.01, delta=0.05, report_dir=tmp_path / "reports", embed=embed)
    written = Calibration.load(out)
    assert written == written_cal
    assert written.scout == scout_calibration().scout and written.scout_version == "t-2026-12-02-00000000"
    part = written.cache
    assert part is not None and part.threshold is not None and part.embedder.model == "fake"
    assert part.data["calibration_pairs"] + part.data["evaluation_pairs"] == 2000
    assert part.evaluation.split == "evaluation" and part.evaluation.false_hits == 0
    assert math.isclose(part.evaluation.recall, 1.0)
    assert (tmp_path / "reports" / "cache-t.json").exists() and (tmp_path / "reports" / "cache-t.md").exists()
    assert "evaluation" in (tmp_path / "reports" / "cache-t.md").read_text()
    assert report["at_configured"][1]["split"] == "evaluation"

    # `infopt calibrate fit` rewrites the Scout part and keeps the cache part.
    from tests.unit.test_calibrate import rows

    collected = tmp_path / "collected.jsonl"
    collected.write_text("\n".join(json.dumps(r) for r in rows(40, 3, "calibration")))
    refit, _ = run_fit(collected, out, profile="t", epsilon=0.01, delta=0.05, embedder_path=None, max_tokens=64)
    assert refit.cache == part and Calibration.load(out).version.endswith("+" + part.version)


def test_with_a_verifier_its_score_threshold_is_calibrated_apart_from_its_train_split(tmp_path):
    """Every pair is near-identical text (the similarity cannot tell them apart); a verifier that can is
    calibrated on the calibration split without its train split, and serving applies its threshold."""
    data = tmp_path / "data" / "qqp"
    data.mkdir(parents=True)
    lines, dups = [], set()
    for i in range(2000):
        dup = i % 5 < 2
        q1, q2 = f"how do i learn topic {i}", f"how do i learn topic {i} fast"
        if dup:
            dups.add((q1, q2))
        lines.append(f"{i}\t{2 * i}\t{2 * i + 1}\t{q1}\t{q2}\t{int(dup)}")
    (data / "qqp_dev.tsv").write_text("\n".join(lines) + "\n")
    asked: list[tuple[str, str]] = []

    def verify(pairs):
        asked.extend(pairs)
        return [0.9 if p in dups else 0.1 for p in pairs]

    config = AppConfig(profile="t", cache_dir=tmp_path, scout={"model": "small"}, validator={"model": "large"},
                       cache={"enabled": True, "guards": False, "embedder": {"model": "fake", "dimension": 64},
                              "verifier": {"model": "ce", "propose_threshold": 0.5}})
    out = tmp_path / "cal.json"
    cal, _ = run_cache(config, out, data_dir=tmp_path / "data", embedder_path=str(tmp_path / "nowhere"),
                       epsilon=0.02, delta=0.05, embed=lambda texts: [FakeEmbedder.vector(t) for t in texts],
                       verify=verify)  # ε 2%: the calibration split (20% of the groups) holds too few for 1%
    part = cal.cache
    assert part.rule == "verifier" and part.verifier.model == "ce" and part.verifier.propose_threshold == 0.5
    assert 0.1 < part.threshold <= 0.9 and part.false_hits == 0
    assert part.evaluation.false_hits == 0 and math.isclose(part.evaluation.recall, 1.0)
    d = part.data
    assert d["train_pairs"] > 0 and d["train_pairs"] + d["calibration_pairs"] + d["evaluation_pairs"] == 2000
    assert len(asked) == 2000  # every pair is proposed (similarity >= 0.5), scored once

    served, _ = threshold_in_force(config.cache, Calibration.load(out))
    assert served.verifier.threshold == part.threshold
    assert served.similarity_threshold == config.cache.similarity_threshold
    # The same file for a profile without that verifier (or without any) is refused.
    for verifier in ({"model": "other", "propose_threshold": 0.5}, {"model": "ce", "propose_threshold": 0.7}, {}):
        other = config.cache.model_copy(update={"verifier": type(config.cache.verifier)(**verifier)})
        with pytest.raises(CalibrationMismatchError):
            threshold_in_force(other, Calibration.load(out))


def test_the_shipped_tiny_calibration_fits_the_tiny_profile():
    """cluster/calibration/tiny.json: its cache part (when it has one) is for the tiny profile's embedder."""
    path = REPO / "cluster" / "calibration" / "tiny.json"
    if not path.exists():
        pytest.skip("no cluster/calibration/tiny.json")
    calibration = Calibration.load(path)
    config = load_profile("tiny")
    in_force, reported = threshold_in_force(config.cache, calibration)
    if calibration.cache is not None and calibration.cache.threshold is not None:
        assert in_force.similarity_threshold == calibration.cache.threshold
        assert "+cache-" in reported.version
    assert calibration.scout is None or calibration.scout_model == "smollm2-135m-instruct"


def test_a_cascade_model_as_the_verifier_is_calibrated_with_its_own_weights(tmp_path, monkeypatch):
    """`cache.verifier.model: validator`: calibration scores the proposed pairs with the Validator's folder
    (`infopt.cross_check`, monkeypatched here: it loads vLLM) and records that folder's weights."""
    from infopt import cross_check
    from infopt.cli import _verifier_path

    data = tmp_path / "data" / "qqp"
    data.mkdir(parents=True)
    lines = [f"{i}\t{2 * i}\t{2 * i + 1}\thow do i learn topic {i}\thow do i learn topic {i} fast\t{int(i % 5 < 2)}"
             for i in range(1000)]
    (data / "qqp_dev.tsv").write_text("\n".join(lines) + "\n")
    folder = tmp_path / "validator-weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    seen = {}

    def score_pairs(model_path, pairs, cache_file):
        seen.update(model=model_path, pairs=len(pairs), file=cache_file)
        return np.array([0.9 if int(a.split()[-1]) % 5 < 2 else 0.1 for a, _ in pairs]), {}

    monkeypatch.setattr(cross_check, "score_pairs", score_pairs)
    config = AppConfig(profile="t", cache_dir=tmp_path, scout={"model": "small"}, validator={"model": str(folder)},
                       cache={"enabled": True, "guards": False, "embedder": {"model": "fake", "dimension": 64},
                              "verifier": {"model": "validator", "propose_threshold": 0.5}})
    assert _verifier_path(config) == str(folder.resolve())
    cal, _ = run_cache(config, tmp_path / "cal.json", data_dir=tmp_path / "data", embedder_path=str(tmp_path / "x"),
                       epsilon=0.05, delta=0.05, embed=lambda texts: [FakeEmbedder.vector(t) for t in texts],
                       verifier_path=_verifier_path(config), report_dir=tmp_path / "reports")
    assert seen["model"] == str(folder.resolve()) and seen["pairs"] == 1000
    assert seen["file"].parent == tmp_path / "reports"  # the scores are kept beside the report, for re-runs
    part = cal.cache
    assert part.rule == "verifier" and part.verifier.model == "validator"
    assert part.verifier.sha256 == hashlib.sha256(b"weights").hexdigest() and 0.1 < part.threshold <= 0.9


def test_the_laptop_profile_names_its_shipped_calibration_and_keeps_no_scout_answer():
    """cluster/calibration/laptop.json (`make calibrate PROFILE=laptop`, 700 prompts): made for the laptop pair, and
    with no bound certified the Scout's answers are never kept; it still drafts for verified escalation."""
    import math

    from serving.engines.base import GenerationRequest
    from serving.pipeline import Route, SkipReason
    from serving.policy.escalation import EscalationPolicy

    config = load_profile("laptop")
    path = config.calibration_path()
    assert path is not None and path.exists(), "the laptop profile names its calibration file"
    calibration = Calibration.load(path)
    calibration.check(config.scout.served_name(), config.validator.served_name())
    threshold_in_force(config.cache, calibration)  # a cache part, when there is one, fits the laptop cache
    assert calibration.scout is not None and calibration.scout.bound is None
    policy = EscalationPolicy(config.tiering, can_verify_drafts=True, calibration=calibration)
    assert math.isinf(policy.threshold(None))
    greedy = GenerationRequest(messages=[{"role": "user", "content": "hi"}], temperature=0)
    sampled = GenerationRequest(messages=[{"role": "user", "content": "hi"}], temperature=0.7)
    assert policy.skip_scout(Route.AUTO, None, None, greedy) is None  # its answer is the Validator's draft
    assert policy.skip_scout(Route.AUTO, None, None, sampled) is SkipReason.UNCERTIFIED  # nothing to verify
