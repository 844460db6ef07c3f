import pytest
from pydantic import ValidationError

from serving.config import AppConfig, EngineConfig, load_profile, profile_args, profile_names

BASE = {"scout": {"model": "a"}, "validator": {"model": "b"}}


def test_every_profile_validates():
    names = profile_names()
    assert {"tiny", "laptop"} <= set(names) and any(n.startswith("gpu-") for n in names)
    for name in names:
        cfg = load_profile(name)
        assert cfg.profile == name


def test_every_field_has_a_description():
    from pydantic import BaseModel

    seen = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann)

    walk(AppConfig)
    assert len(seen) >= 5


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


def test_readme_documents_every_config_key():
    from pydantic import BaseModel

    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Configuration reference"):readme.index("## Metrics")]
    missing = []

    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann)
            elif f"{name}`" not in section:
                missing.append(f"{model.__name__}.{name}")

    walk(AppConfig)
    assert not missing, f"README configuration reference lacks: {missing}"
