"""The application DAG: Ingress -> (SemanticCache -> Embedder, Scout, Validator).

`serve run deployments.app:build_app` (with `key=value` args or a profile's YAML) and
`serve run cluster/<profile>.yaml` both end here.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.cache import Embedder, SemanticCacheDeployment
from deployments.engines import build_engine
from deployments.ingress import Ingress
from serving.config import AppConfig, load_profile


def build_app(args: dict[str, Any]) -> Application:
    """Build the Serve application from its config `args` (a profile's `args` block).

    `args` may also be just `{"profile": "tiny"}` (as from `serve run deployments.app:build_app
    profile=tiny`), which loads `cluster/tiny.yaml`.
    """
    args = dict(args or {})
    config = load_profile(args["profile"]) if set(args) == {"profile"} else AppConfig(**args)
    scout = build_engine(config.scout, "Scout", config)
    validator = build_engine(config.validator, "Validator", config)
    return Ingress.options(
        num_replicas=config.api.num_replicas,
        max_ongoing_requests=config.api.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.api.num_cpus},
    ).bind(scout, validator, config, build_cache(config))


def build_cache(config: AppConfig) -> Application | None:
    """The SemanticCache deployment (with its Embedder), or None when the cache is off."""
    if not config.cache.enabled:
        return None
    emb = config.cache.embedder
    # Resolved here, in the driver: an unprepared embedder fails `serve run` with the fix.
    model_path = config.resolve_model(emb.model)
    embedder = Embedder.options(
        autoscaling_config=emb.autoscaling.model_dump(),
        ray_actor_options={"num_cpus": emb.num_cpus, "num_gpus": emb.num_gpus},
    ).bind(model_path, emb)
    return SemanticCacheDeployment.options(
        num_replicas=config.cache.num_replicas,
        ray_actor_options={"num_cpus": config.cache.num_cpus},
    ).bind(embedder, config)
