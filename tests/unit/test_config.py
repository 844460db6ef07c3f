import re
import typing

import pytest
from pydantic import BaseModel, ValidationError

from serving.config import (
    AnalyzerConfig,
    AppConfig,
    DeploymentOptions,
    EmbedderDeployment,
    EngineConfig,
    IngressDeployment,
    LoadConfig,
    PriorityConfig,
    load_profile,
    profile_args,
    profile_names,
)

BASE = {"scout": {"model": "a"}, "validator": {"model": "b"}}


def test_every_profile_validates():
    names = profile_names()
    assert {"tiny", "laptop"} <= set(names) and any(n.startswith("gpu-") for n in names)
    for name in names:
        cfg = load_profile(name)
        assert cfg.profile == name


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def test_every_field_has_a_description():
    seen = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for sub in _models_in(field.annotation):  # optional models too (`autoscaling: ... | None`)
                walk(sub)

    walk(AppConfig)
    assert {DeploymentOptions, IngressDeployment, EmbedderDeployment, PriorityConfig, LoadConfig} <= seen


def test_unknown_keys_are_rejected_at_every_level():
    with pytest.raises(ValidationError, match="extra"):
        AppConfig(**BASE, surprise=1)
    with pytest.raises(ValidationError, match="extra"):
        AppConfig(scout={"model": "a", "temprature": 1}, validator={"model": "b"})
    with pytest.raises(ValidationError, match="extra"):
        AppConfig(**BASE, tiering={"treshold": 0.3})


@pytest.mark.parametrize(
    "override",
    [
        {"tiering": {"threshold": 1.5}},
        {"tiering": {"confidence": {"quantile": 0.9}}},
        {"api": {"max_tokens_limit": 0}},
        {"api": {"default_max_tokens": 100, "max_tokens_limit": 10}},
        {"scout": {"model": "a", "tensor_parallel_size": 2}},
        {"scout": {"model": "a", "accelerator_type": "A100"}},
        {"validator": {"model": "b", "autoscaling": {"min_replicas": 3, "max_replicas": 1}}},
        {"scout": {"model": "a", "cpu_threads_bind": "0"}, "validator": {"model": "b", "cpu_threads_bind": "0"}},
    ],
)
def test_bounds_and_rules(override):
    with pytest.raises(ValidationError):
        AppConfig(**{**BASE, **override})


def test_env_overrides_the_profile(monkeypatch):
    monkeypatch.setenv("INFOPT_TIERING__THRESHOLD", "0.77")
    monkeypatch.setenv("INFOPT_VALIDATOR__MAX_MODEL_LEN", "1024")
    cfg = load_profile("tiny")
    assert cfg.tiering.threshold == 0.77
    assert cfg.validator.max_model_len == 1024
    # The rest of the nested model still comes from the file.
    assert cfg.validator.model == profile_args("tiny")["validator"]["model"]


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("INFOPT_CACHE_DIR", str(tmp_path))
    assert AppConfig(**BASE).cache_dir == tmp_path


def test_unknown_profile_lists_known_ones():
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_profile("nope")


def test_served_name():
    assert EngineConfig(model="Qwen/Qwen2.5-7B").served_name() == "Qwen/Qwen2.5-7B"
    assert EngineConfig(model="/models/my-llm/").served_name() == "my-llm"
    assert EngineConfig(model="x", served_model_name="y").served_name() == "y"


def test_gpu_profile_maps_to_tensor_parallel_bundles():
    from deployments.engines import llm_config_kwargs

    cfg = load_profile("gpu-a100x4")
    kw = llm_config_kwargs(cfg.validator, cfg.validator.model, cfg.draft_model(cfg.validator))
    assert kw["engine_kwargs"]["tensor_parallel_size"] == 2
    # The Scout's model drafts for the Validator (one tokenizer), and stops above 8 sequences.
    spec = kw["engine_kwargs"]["speculative_config"]
    assert spec["method"] == "draft_model" and spec["model"] == cfg.scout.model
    assert spec["num_speculative_tokens_per_batch_size"] == [[1, 8, 4], [9, cfg.validator.max_num_seqs, 0]]
    assert kw["placement_group_config"] == {"bundles": [{"GPU": 1, "CPU": 1}] * 2, "strategy": "STRICT_PACK"}
    assert kw["accelerator_type"] == "A100"
    assert kw["runtime_env"] is None


def test_cpu_engine_gets_its_core_and_kv_cache():
    from deployments.engines import llm_config_kwargs

    cfg = load_profile("tiny")
    kw = llm_config_kwargs(cfg.scout, "/m")
    env = kw["runtime_env"]["env_vars"]
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"}
    assert kw["engine_kwargs"]["enforce_eager"] is True
    assert kw["model_loading_config"] == {"model_id": "smollm2-135m-instruct", "model_source": "/m"}
    assert "gpu_memory_utilization" not in kw["engine_kwargs"]


def test_llm_config_accepts_our_kwargs():
    """Ray's own LLMConfig validates what we build (CPU and GPU profiles)."""
    pytest.importorskip("vllm")
    from ray.serve.llm import LLMConfig

    from deployments.engines import llm_config_kwargs

    for profile in ("tiny", "gpu-a100x4", "gpu-h100x8"):
        cfg = load_profile(profile)
        for engine in (cfg.scout, cfg.validator):
            llm = LLMConfig(**llm_config_kwargs(engine, engine.model, cfg.draft_model(engine)))
            assert llm.model_id == engine.served_name()
            assert llm.engine_kwargs["max_model_len"] == engine.max_model_len
            uses_gpu = any(b.get("GPU") for b in llm.placement_group_config["bundles"])
            assert uses_gpu == (engine.device == "gpu")


# --- the tree mirrors the design: priority and load are sections of their own -------------------------

def test_priority_and_load_are_top_level_sections():
    cfg = AppConfig(**BASE, priority={"classes": {"interactive": 0, "batch": 10, "bulk": 20}},
                    auth={"tenants": {"acme": {"keys": [{"sha256": "ab" * 32}], "priority": "bulk"}}},
                    load={"interval_s": 2.0, "autoscaling": {"enabled": True}, "batching": {"min_wait_s": 0.001}})
    assert cfg.priority.classes["bulk"] == 20 and cfg.auth.tenants["acme"].priority == "bulk"
    assert cfg.priority.priority_header == "x-infopt-priority" and cfg.priority.default_priority == "interactive"
    assert (cfg.load.interval_s, cfg.load.autoscaling.enabled, cfg.load.batching.min_wait_s) == (2.0, True, 0.001)
    # What the analyzer keeps: its own decisions only, no placement (it runs inside the Ingress).
    assert set(AnalyzerConfig.model_fields) == {"enabled", "artifact", "direct_threshold", "tokenizer", "timeout_s",
                                                "expected_output_tokens"}
    assert cfg.load.autoscaling.enabled and load_profile("gpu-a100x4").load.autoscaling.horizon_s == 120


@pytest.mark.parametrize(("args", "message"), [
    ({"analyzer": {"priorities": {"interactive": 0}}}, "analyzer.priorities moved to priority.classes"),
    ({"analyzer": {"tenant_priorities": {}}}, "analyzer.tenant_priorities moved to auth.tenants.<name>.priority"),
    ({"priority": {"tenants": {}}}, "priority.tenants moved to auth.tenants.<name>.priority"),
    ({"cache": {"admin_key": "k"}}, "cache.admin_key moved to auth.admin_keys"),
    ({"analyzer": {"priority_header": "x-p"}}, "analyzer.priority_header moved to priority.priority_header"),
    ({"analyzer": {"default_priority": "batch"}}, "analyzer.default_priority moved to priority.default_priority"),
    ({"analyzer": {"load": {"interval_s": 1}}}, "analyzer.load moved to the top-level load section"),
    ({"analyzer": {"batching": {"enabled": False}}}, "analyzer.batching moved to load.batching"),
    ({"analyzer": {"num_replicas": 2}}, "analyzer.num_replicas is gone: the analyzer runs inside the Ingress"),
    ({"analyzer": {"max_batch_size": 8}}, "analyzer.max_batch_size is gone"),
    ({"api": {"num_cpus": 1}}, "api.num_cpus moved to api.deployment.num_cpus"),
    ({"cache": {"autoscaling": {"max_replicas": 1}}}, "cache.autoscaling moved to cache.deployment.autoscaling"),
    ({"cache": {"embedder": {"num_gpus": 0.1}}}, "cache.embedder.num_gpus moved to cache.embedder.deployment.num_gpus"),
])
def test_a_moved_key_is_rejected_with_where_it_went(args, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        AppConfig(**BASE, **args)


def test_priority_classes_must_be_known():
    with pytest.raises(ValidationError, match="default_priority 'vip' is not one of the classes"):
        AppConfig(**BASE, priority={"default_priority": "vip"})
    with pytest.raises(ValidationError, match=r"auth.tenants name unknown priority classes \{'t': 'vip'\}"):
        AppConfig(**BASE, auth={"tenants": {"t": {"keys": [{"sha256": "ab" * 32}], "priority": "vip"}}})
    # Renaming the classes is fine as long as the default is among them.
    assert PriorityConfig(classes={"now": 0}, default_priority="now").classes == {"now": 0}


# --- one model for every deployment's Ray Serve options ----------------------------------------------

def test_every_light_deployment_uses_the_one_options_model():
    cfg = AppConfig(**BASE)
    sections = {"api": cfg.api, "cache": cfg.cache, "cache.embedder": cfg.cache.embedder}
    base = DeploymentOptions.model_fields
    for where, section in sections.items():
        options = section.deployment
        assert isinstance(options, DeploymentOptions), where
        # No copies of the placement fields beside it.
        assert not set(base) & set(type(section).model_fields), where
        # Each field (bounds and description) is the shared definition; only defaults differ.
        for name, field in type(options).model_fields.items():
            if name in base:
                assert field.description.startswith(base[name].description), (where, name)
                assert field.metadata == base[name].metadata, (where, name)
    assert (cfg.api.deployment.max_ongoing_requests, cfg.cache.deployment.max_ongoing_requests) == (256, 64)
    emb = cfg.cache.embedder.deployment
    assert (emb.num_cpus, emb.autoscaling.max_replicas, emb.num_gpus) == (0.25, 2, 0.0)
    assert emb.ray_actor_options() == {"num_cpus": 0.25, "num_gpus": 0.0}
    # The engines share the queue limits and resources (their placement is a vLLM placement group).
    for name in ("max_ongoing_requests", "max_queued_requests", "resources"):
        assert EngineConfig.model_fields[name].description.startswith(base[name].description), name
    assert EngineConfig(model="a").max_ongoing_requests == 32


@pytest.mark.parametrize("args", [
    {"api": {"deployment": {"max_ongoing_requests": 0}}},  # a subclass's own default keeps the shared bounds
    {"cache": {"embedder": {"deployment": {"num_cpus": 0}}}},
    {"cache": {"deployment": {"max_queued_requests": -2}}},
    {"scout": {"model": "a", "max_queued_requests": -2}},
    {"cache": {"deployment": {"num_replicas": 2, "autoscaling": {"max_replicas": 3}}}},
    {"cache": {"deployment": {"surprise": 1}}},
    # Ray hands an Embedder replica at most max_ongoing_requests texts: a bigger batch could never fill.
    {"cache": {"embedder": {"max_batch_size": 128}}},
])
def test_deployment_options_are_validated_wherever_they_are_used(args):
    with pytest.raises(ValidationError):
        AppConfig(**{**BASE, **args})


def test_serve_options_are_what_deployment_options_takes():
    options = DeploymentOptions(num_cpus=0.5, autoscaling={"min_replicas": 0, "max_replicas": 3},
                                max_queued_requests=100, resources={"infopt_cpu_node": 1})
    assert options.serve_options() == {
        "autoscaling_config": {**options.autoscaling.model_dump(), "initial_replicas": 1},
        "max_ongoing_requests": 64, "max_queued_requests": 100,
        "ray_actor_options": {"num_cpus": 0.5, "resources": {"infopt_cpu_node": 1}},
    }
    assert DeploymentOptions(num_replicas=3).serve_options()["num_replicas"] == 3
    # The replica part can be decided by the app (the Ingress under cascade autoscaling).
    fixed = DeploymentOptions(num_replicas=3).serve_options({"autoscaling_config": {"min_replicas": 3}})
    assert "num_replicas" not in fixed and fixed["autoscaling_config"] == {"min_replicas": 3}
