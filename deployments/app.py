"""The application DAG: Ingress -> (RequestAnalyzer -> Embedder, SemanticCache -> Embedder, Scout, Validator).

`serve run deployments.app:build_app` (with `key=value` args or a profile's YAML) and
`serve run cluster/<profile>.yaml` both end here.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.analyzer import build_analyzer
from deployments.cache import Embedder, SemanticCacheDeployment
from deployments.engines import build_engine
from deployments.ingress import Ingress
from serving.config import AppConfig, load_profile
from serving.config.engine import replica_options


def build_app(args: dict[str, Any]) -> Application:
    """Build the Serve application from its config `args` (a profile's `args` block).

    `args` may also be just `{"profile": "tiny"}` (as from `serve run deployments.app:build_app
    profile=tiny`), which loads `cluster/tiny.yaml`.
    """
    config = app_config(args)
    scout = build_engine(config.scout, "Scout", config)
    validator = build_engine(config.validator, "Validator", config)
    # One Embedder deployment serves both the cache and the analyzer.
    embedder = build_embedder(config)
    return Ingress.options(
        **ingress_replicas(config),
        max_ongoing_requests=config.api.max_ongoing_requests,
        max_queued_requests=config.api.max_queued_requests,
        ray_actor_options=actor_options(config.api.num_cpus, resources=config.api.resources),
    ).bind(scout, validator, config, build_cache(config, embedder),
           build_analyzer(config, embedder) if embedder is not None else None)


def app_config(args: dict[str, Any] | None) -> AppConfig:
    """The configuration in a Serve application's `args`: a whole config, or just `{"profile": name}`."""
    args = dict(args or {})
    return load_profile(args["profile"]) if set(args) == {"profile"} else AppConfig(**args)


def ingress_replicas(config: AppConfig) -> dict[str, Any]:
    """The Ingress's replica options (`replicas`). Under cascade autoscaling it always autoscales (a fixed
    count becomes min = max): Ray Serve collects a deployment's custom autoscaling metrics
    (`Ingress.record_autoscaling_stats`) and shows them to an application policy only when it autoscales."""
    api = config.api
    options = replica_options(api.num_replicas, api.autoscaling)
    if not config.analyzer.load.autoscaling.enabled:
        return options
    n = api.num_replicas
    scaling = options.get("autoscaling_config") or {"min_replicas": n, "initial_replicas": n, "max_replicas": n}
    # The figures are smoothed already (forecast, EWMAs): a short look-back keeps them fresh
    # (Ray wants it longer than its 10 s metrics interval).
    return {"autoscaling_config": {**scaling, "look_back_period_s": max(2 * config.analyzer.load.interval_s, 20.0)}}


def application_autoscaling_policy(config: AppConfig) -> dict[str, Any] | None:
    """The Serve application's `autoscaling_policy` when `analyzer.load.autoscaling.enabled`, else None.

    The Validator is scaled by the cascade (`serving.load.autoscaling.CascadeApplicationPolicy`, from
    the Ingress's figures); every other autoscaling deployment keeps Ray's request-based policy.
    Application-level policies are part of a Serve *config* (`serve run cluster/<profile>.yaml`,
    KubeRay's serveConfigV2; scripts/render_configs.py writes it into the profiles): `serve run
    deployments.app:build_app` cannot carry one, and the Validator then scales by its requests.
    """
    cascade = config.analyzer.load.autoscaling
    if not cascade.enabled:
        return None
    return {
        "policy_function": "serving.load.autoscaling:CascadeApplicationPolicy",
        "policy_kwargs": {"validator": "Validator", "source": "Ingress",
                          **cascade.model_dump(mode="json", exclude={"enabled"})},
    }


def build_embedder(config: AppConfig) -> Application | None:
    """The Embedder deployment, when the cache or the analyzer needs it."""
    if not config.needs_embedder:
        return None
    emb = config.cache.embedder
    # Resolved here, in the driver: an unprepared embedder fails `serve run` with the fix.
    model_path = config.resolve_model(emb.model)
    return Embedder.options(
        autoscaling_config=emb.autoscaling.model_dump(),
        max_ongoing_requests=emb.max_ongoing_requests,
        max_queued_requests=emb.max_queued_requests,
        ray_actor_options=actor_options(emb.num_cpus, emb.num_gpus, emb.resources),
    ).bind(model_path, emb, config.analyzer.batching)


def build_cache(config: AppConfig, embedder: Application | None) -> Application | None:
    """The SemanticCache deployment over `embedder`, or None when the cache is off."""
    if not config.cache.enabled or embedder is None:
        return None
    return SemanticCacheDeployment.options(
        **replica_options(config.cache.num_replicas, config.cache.autoscaling),
        max_ongoing_requests=config.cache.max_ongoing_requests,
        max_queued_requests=config.cache.max_queued_requests,
        ray_actor_options=actor_options(config.cache.num_cpus, resources=config.cache.resources),
    ).bind(embedder, config)


def actor_options(num_cpus: float, num_gpus: float | None = None, resources: dict[str, float] | None = None
                  ) -> dict[str, Any]:
    """A replica's `ray_actor_options`: its CPU (and GPU) share plus any custom resources pinning it to nodes."""
    options: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus is not None:
        options["num_gpus"] = num_gpus
    if resources:
        options["resources"] = dict(resources)
    return options
