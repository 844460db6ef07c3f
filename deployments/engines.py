"""The Scout and Validator deployments: vLLM hosted by `ray.serve.llm`.

Each engine is an LLMServer deployment built from our `EngineConfig`. What vLLM loads is
resolved here, in the driver, so a missing catalog model fails `serve run` at once with
the command that fixes it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from serving.config import AppConfig, EngineConfig

# Ray Serve LLM's prefix-cache affinity router, extended to token-id prompts (deployments/routing.py).
PREFIX_ROUTER = "deployments.routing:TokenPrefixAffinityRouter"


def llm_config_kwargs(engine: EngineConfig, model_source: str, draft_source: str | None = None) -> dict[str, Any]:
    """The keyword arguments of `ray.serve.llm.LLMConfig` for one engine (pure, testable).

    `draft_source` is what vLLM loads as the draft model when `engine.speculative.method`
    is 'draft_model'.
    """
    engine_kwargs: dict[str, Any] = {
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "max_num_seqs": engine.max_num_seqs,
        "enforce_eager": engine.enforce_eager,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "scheduling_policy": engine.scheduling_policy,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
    }
    if engine.quantization:
        engine_kwargs["quantization"] = engine.quantization
    speculative = engine.speculative.vllm_config(engine.max_num_seqs, draft_source)
    if speculative:
        engine_kwargs["speculative_config"] = speculative
    env: dict[str, str] = {}
    if engine.device == "cpu":
        # The replica actor itself reserves nothing: its CPU share is the engine's bundle.
        bundles = [{"CPU": engine.num_cpus}]
        env["VLLM_CPU_KVCACHE_SPACE"] = str(engine.kv_cache_space_gib)
        if engine.cpu_threads_bind:
            env["VLLM_CPU_OMP_THREADS_BIND"] = engine.cpu_threads_bind
    else:
        engine_kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        # One bundle per GPU worker; STRICT_PACK keeps a tensor-parallel group on one node.
        bundles = [{"GPU": 1, "CPU": 1}] * (engine.tensor_parallel_size * engine.pipeline_parallel_size)
    engine_kwargs.update(engine.engine_kwargs)
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": engine.served_name(), "model_source": model_source},
        "engine_kwargs": engine_kwargs,
        "placement_group_config": {"bundles": bundles, "strategy": engine.placement_strategy},
        "deployment_config": {
            # An LLM deployment always autoscales: a fixed count is a range with min = max.
            "autoscaling_config": engine.autoscaling.serve_config(),
            "max_ongoing_requests": engine.max_ongoing_requests,
            "max_queued_requests": engine.max_queued_requests,
            # ray.serve.llm adds the replica actor's resources to the first bundle: custom
            # resources given here pin the whole replica (engine included) to matching nodes.
            "ray_actor_options": {"num_cpus": 0, **({"resources": engine.resources} if engine.resources else {})},
        },
        "runtime_env": {"env_vars": env} if env else None,
    }
    if engine.request_router == "prefix_aware":
        kwargs["deployment_config"]["request_router_config"] = {"request_router_class": PREFIX_ROUTER}
    if engine.accelerator_type:
        kwargs["accelerator_type"] = engine.accelerator_type
    return kwargs


def check_proposer(engine: EngineConfig) -> None:
    """Fail `serve run` at once, with the fix, when the engine's speculative proposer is not installed.

    Suffix decoding comes from arctic-inference, an optional extra built from source (no wheel);
    without it vLLM would fail deep inside the replica, minutes later.
    """
    if engine.speculative.method == "suffix" and importlib.util.find_spec("arctic_inference") is None:
        raise RuntimeError(
            "speculative method 'suffix' needs arctic-inference, the inference-optimizer[suffix] extra: "
            "pip install -e '.[suffix]' in the checkout (a source build, on GPU machines), or choose "
            "speculative.method 'ngram' or 'draft_model'"
        )


def build_engine(engine: EngineConfig, role: str, config: AppConfig) -> Any:
    """A bound LLMServer deployment named `role` ("Scout" or "Validator")."""
    from ray.serve.llm import LLMConfig, build_llm_deployment

    check_proposer(engine)
    draft = None
    if engine.speculative.method == "draft_model":
        draft = config.resolve_model(config.draft_model(engine))
    llm_config = LLMConfig(**llm_config_kwargs(engine, config.resolve_model(engine.model), draft))
    return build_llm_deployment(llm_config, name_prefix="", override_serve_options={"name": role})
