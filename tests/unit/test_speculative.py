"""In-engine speculative decoding and prefix-aware routing: what the engines are configured with."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.config import EngineConfig, SpeculativeConfig


def test_off_by_default():
    assert SpeculativeConfig().vllm_config(16) is None
    assert "speculative_config" not in _kwargs(EngineConfig(model="m"))["engine_kwargs"]


def test_ngram_maps_to_vllms_prompt_lookup():
    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=3, prompt_lookup_min=2, prompt_lookup_max=5,
                             max_concurrency=None).vllm_config(8)
    assert spec == {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 5}


def test_draft_model_needs_a_draft_and_can_allow_another_vocabulary():
    cfg = SpeculativeConfig(method="draft_model", heterogeneous_vocab=True, max_concurrency=None)
    assert cfg.vllm_config(8, "/models/small") == {"method": "draft_model", "num_speculative_tokens": 4,
                                                   "model": "/models/small", "use_heterogeneous_vocab": True}
    with pytest.raises(ValueError, match="draft model"):
        cfg.vllm_config(8)


def test_speculation_stops_above_max_concurrency_by_vllms_own_schedule():
    """The schedule is read by vLLM's scheduler: K tokens up to the limit, none above it."""
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=4, max_concurrency=3).vllm_config(16)
    lookup = build_dynamic_sd_schedule_lookup(spec["num_speculative_tokens_per_batch_size"], 16, 4)
    assert lookup[1:4] == [4, 4, 4] and lookup[4:] == [0] * 13
    # A limit at or above the batch size needs no schedule: always speculate.
    assert "num_speculative_tokens_per_batch_size" not in SpeculativeConfig(
        method="ngram", max_concurrency=16).vllm_config(16)


def test_bad_settings_are_rejected():
    with pytest.raises(ValidationError):
        SpeculativeConfig(method="eagle")
    with pytest.raises(ValidationError):
        SpeculativeConfig(method="ngram", prompt_lookup_min=5, prompt_lookup_max=2)
    with pytest.raises(ValidationError):
        SpeculativeConfig(num_speculative_tokens=0)


def test_suffix_decoding_without_arctic_inference_fails_at_once_with_the_fix(monkeypatch):
    import importlib.util

    from deployments import engines

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "arctic_inference" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"inference-optimizer\[suffix\]"):
        engines.check_proposer(EngineConfig(model="m", speculative={"method": "suffix"}))
    engines.check_proposer(EngineConfig(model="m", speculative={"method": "ngram"}))  # the others need nothing
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    engines.check_proposer(EngineConfig(model="m", speculative={"method": "suffix"}))  # installed: fine


def _kwargs(engine: EngineConfig, draft: str | None = None) -> dict:
    from deployments.engines import llm_config_kwargs

    return llm_config_kwargs(engine, "/models/x", draft)


def test_the_validator_gets_speculation_and_the_prefix_router():
    engine = EngineConfig(model="big", max_num_seqs=8, speculative={"method": "draft_model", "max_concurrency": 2})
    kw = _kwargs(engine, "/models/small")
    assert kw["engine_kwargs"]["speculative_config"]["model"] == "/models/small"
    assert kw["engine_kwargs"]["speculative_config"]["num_speculative_tokens_per_batch_size"] == [[1, 2, 4],
                                                                                                  [3, 8, 0]]
    assert kw["deployment_config"]["request_router_config"] == {
        "request_router_class": "deployments.routing:TokenPrefixAffinityRouter"}
    assert "request_router_config" not in _kwargs(EngineConfig(model="m", request_router="power_of_two"))[
        "deployment_config"]


def test_ray_accepts_the_engine_config_and_resolves_the_router():
    pytest.importorskip("vllm")
    from ray.serve.config import RequestRouterConfig
    from ray.serve.llm import LLMConfig

    from deployments.routing import TokenPrefixAffinityRouter

    engine = EngineConfig(model="big", speculative={"method": "ngram"})
    llm = LLMConfig(**_kwargs(engine))
    assert llm.engine_kwargs["speculative_config"]["method"] == "ngram"
    router = RequestRouterConfig(**llm.deployment_config["request_router_config"])
    assert router.get_request_router_class() is TokenPrefixAffinityRouter


def test_token_id_prompts_are_routed_by_their_prefix():
    from deployments.routing import TokenPrefixAffinityRouter

    router = object.__new__(TokenPrefixAffinityRouter)  # the text mapping needs no router state
    scoring = router._normalize_prompt_to_string([151644, 872, 198, 3838, 374, 220, 17])
    continuation = router._normalize_prompt_to_string([151644, 872, 198, 3838, 374, 220, 17, 18, 19])
    other = router._normalize_prompt_to_string([151644, 872, 198, 9999])
    assert len(scoring) == 7 and continuation.startswith(scoring) and not other.startswith(scoring)
    # Text prompts and chat messages read as Ray's router reads them.
    assert router._normalize_prompt_to_string("Hello there") == "Hello there"
    assert router._normalize_prompt_to_string([{"role": "user", "content": "Hi"}]) == "Hi"



def test_a_request_with_no_text_is_routed_by_the_default_rule():
    """An empty chat or prompt must not reach Ray's match rate (a division by the text's length, retried
    forever: the request hung)."""
    from types import SimpleNamespace

    from deployments.routing import TokenPrefixAffinityRouter

    router = object.__new__(TokenPrefixAffinityRouter)

    def pending(**fields):
        return SimpleNamespace(args=[SimpleNamespace(**fields)])

    assert router._extract_text_from_request(pending(messages=[{"role": "user", "content": None}])) is None
    assert router._extract_text_from_request(pending(messages=[{"role": "user", "content": []}])) is None
    assert router._extract_text_from_request(pending(prompt="")) is None
    assert router._extract_text_from_request(pending(messages=[{"role": "user", "content": "Hi"}])) == "Hi"
