"""How Ray Serve runs one deployment: replicas, queues and placement, defined once for all of them.

`DeploymentOptions` is a nested field of each section whose component is a deployment of its own:
`api.deployment` (the Ingress), `cache.deployment` (SemanticCache), `cache.embedder.deployment`
(Embedder). Nested rather than mixed into each section (a mixin base class) because:

* a profile then reads as *what* a component does beside *where and how many* of it run: the six
  keys sit in one `deployment:` block with the same shape in every section, instead of among the
  section's own settings (`cache.num_cpus` next to `cache.similarity_threshold`);
* the section's validators and the shared ones do not mix (a mixin's `model_validator` and the
  section's run on one model and must not shadow each other);
* the code hands one object to Ray (`serve_options()`), and the configuration reference lists the
  keys once.

Deployments differ in their defaults only (the Ingress takes many requests at once, the Embedder
autoscales and may take a GPU share): subclasses restate just the default with `option()`, which
keeps each field's type, bounds and description defined here, once. The cache uses the base as is.

The Scout and Validator engines are not `DeploymentOptions`: their replica is a vLLM placement
group built by `ray.serve.llm` (its CPUs are the first bundle's, GPU engines get one CPU per GPU
bundle, replicas always an autoscaling range, custom resources go into the first bundle). They
share what is the same: `AutoscalingConfig`, the queue limits and `resources` (through `option()`)
and the resource check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Ray's built-in resource names: set through num_cpus/num_gpus, never as custom resources.
_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}

RESOURCES_DESCRIPTION = (
    "Custom Ray resources each replica needs, e.g. {'infopt_gpu_node': 1} to pin it to nodes started with "
    "`ray start --resources '{\"infopt_gpu_node\": 4}'`."
)
QUEUED_DESCRIPTION = (
    "Requests each caller (proxy or handle) queues for this deployment before it refuses more (back-pressure: "
    "a 429 with Retry-After when the Ingress calls an engine); -1 queues without limit."
)


class AutoscalingConfig(BaseModel):
    """Replica bounds handed to Ray Serve's request-based autoscaler for one deployment."""

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

    def serve_config(self) -> dict[str, Any]:
        """Ray Serve's `autoscaling_config`: these bounds, starting at the minimum (at least one replica, so
        that the first request is not held while a scale-to-zero deployment starts)."""
        return {**self.model_dump(), "initial_replicas": max(self.min_replicas, 1)}


def check_custom_resources(resources: dict[str, float]) -> dict[str, float]:
    """Reject built-in names and negative amounts in a `resources` mapping (every deployment's, engines' too)."""
    for name, amount in resources.items():
        if name in _BUILTIN_RESOURCES:
            raise ValueError(f"resources: '{name}' is built in; set it with num_cpus/num_gpus instead")
        if amount < 0:
            raise ValueError(f"resources: '{name}' must not be negative (got {amount})")
    return resources


def replica_options(num_replicas: int, autoscaling: AutoscalingConfig | None) -> dict[str, Any]:
    """A deployment's Ray Serve replica options: request-based autoscaling over a range, or a fixed count."""
    if autoscaling is None:
        return {"num_replicas": num_replicas}
    return {"autoscaling_config": autoscaling.serve_config()}


class DeploymentOptions(BaseModel):
    """Ray Serve options of one deployment: how many replicas, how many requests each takes and queues,
    and what each reserves (defaults: the SemanticCache's)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(
        0.1, gt=0, description="Ray CPUs reserved by each replica (fractional: these light deployments share "
        "cores with the engines)."
    )
    num_replicas: int = Field(1, ge=1, description="Fixed replica count, used when `autoscaling` is not set.")
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Request-based autoscaling of the replicas within a range (Ray Serve's own policy); "
        "None: the fixed num_replicas. Set one or the other."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica handles at once; more wait in its callers' queues "
        "(max_queued_requests)."
    )
    max_queued_requests: int = Field(-1, ge=-1, description=QUEUED_DESCRIPTION)
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_DESCRIPTION)

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(v)

    @model_validator(mode="after")
    def _count_or_range(self) -> DeploymentOptions:
        # Both set: which one would win? Ray itself refuses num_replicas beside an autoscaling_config.
        if self.autoscaling is not None and self.num_replicas != 1:
            raise ValueError("set num_replicas (a fixed count) or autoscaling (a range), not both "
                             "(autoscaling: null for a fixed count)")
        return self

    @property
    def max_replicas(self) -> int:
        """The most replicas this deployment may run."""
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.num_replicas

    def replica_options(self) -> dict[str, Any]:
        """`num_replicas`, or `autoscaling_config` when a range is set."""
        return replica_options(self.num_replicas, self.autoscaling)

    def ray_actor_options(self) -> dict[str, Any]:
        """A replica's `ray_actor_options`: its CPU share plus any custom resources pinning it to nodes."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        return options

    def serve_options(self, replicas: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments of `Deployment.options()`; `replicas` replaces the replica part
        (`replica_options()`) where the app decides it (the Ingress under cascade autoscaling)."""
        return {
            **(self.replica_options() if replicas is None else replicas),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": self.ray_actor_options(),
        }


_UNCHANGED: Any = object()


def option(name: str, default: Any = _UNCHANGED, *, note: str = "") -> Any:
    """`DeploymentOptions.<name>` with another `default` and `note` appended to its description.

    How a deployment's options (or an engine's shared fields) state their own default without
    restating the field: its bounds and description stay defined once, in `DeploymentOptions`.
    """
    info = DeploymentOptions.model_fields[name]
    # The field's bounds (annotated_types Ge/Gt/...: dataclasses named after Field's keywords).
    bounds = {k: v for meta in info.metadata for k, v in dataclasses.asdict(meta).items()}
    description = f"{info.description}{note}"
    if default is not _UNCHANGED:
        return Field(default, description=description, **bounds)
    if info.default_factory is not None:
        return Field(default_factory=info.default_factory, description=description, **bounds)
    return Field(info.default, description=description, **bounds)


class IngressDeployment(DeploymentOptions):
    """Ray Serve options of the Ingress (the HTTP front door; the request analyzer runs inside it)."""

    max_ongoing_requests: int = option("max_ongoing_requests", 256)


class EmbedderDeployment(DeploymentOptions):
    """Ray Serve options of the Embedder: autoscaled by default, and it may take a GPU share."""

    num_cpus: float = option("num_cpus", 0.25)
    autoscaling: AutoscalingConfig | None = option(
        "autoscaling", AutoscalingConfig(min_replicas=1, max_replicas=2, target_ongoing_requests=16)
    )
    max_ongoing_requests: int = option(
        "max_ongoing_requests", 64, note=" At least cache.embedder.max_batch_size, so that a batch can fill (Ray's "
        "default of 5 would cap it)."
    )
    num_gpus: float = Field(
        0.0, ge=0, description="Ray GPUs reserved by each replica (the embedder's device 'cuda'), e.g. 0.1."
    )

    def ray_actor_options(self) -> dict[str, Any]:
        return {**super().ray_actor_options(), "num_gpus": self.num_gpus}
