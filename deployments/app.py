"""The composition root: the application DAG, Ingress -> (Embedder, SemanticCache -> Embedder, Scout, Validator).

`build_app` builds every deployment and injects the Ingress's parts with `.bind()` — the
engines, the cache and the embedder as the core's Ray-handle adapters (`serving.handles`)
around bound deployments, which Ray Serve turns into handles in the replica (the way
`ray.serve.llm` injects its engine). The request analyzer runs inside the Ingress and
calls the Embedder itself: one Ray hop per request fewer than a deployment of its own.

`serve run deployments.app:build_app` (with `key=value` args or a profile's YAML) and
`serve run cluster/<profile>.yaml` both end here.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.cache import Embedder, SemanticCacheDeployment
from deployments.engines import build_engine
from deployments.ingress import Ingress
from serving.compose import Parts
from serving.config import AppConfig, load_profile
from serving.handles import ServeEmbedder, ServeLLMEngine, ServeResponseCache
from serving.policy.cache import threshold_in_force
from serving.quality.calibration import Calibration


def build_app(args: dict[str, Any]) -> Application:
    """Build the Serve application from its config `args` (a profile's `args` block).

    `args` may also be just `{"profile": "tiny"}` (as from `serve run deployments.app:build_app
    profile=tiny`), which loads `cluster/tiny.yaml`.
    """
    config = app_config(args)
    # One Embedder deployment serves both the cache and the analyzer.
    embedder = build_embedder(config)
    scout = ServeLLMEngine(build_engine(config.scout, "Scout", config), config.scout.served_name(),
                           priority_scheduling=config.scout.scheduling_policy == "priority",
                           replica_death_retries=config.scout.replica_death_retries)
    validator = ServeLLMEngine(
        build_engine(config.validator, "Validator", config), config.validator.served_name(),
        # Verification re-tokenises drafts with the Validator's tokenizer (resolved here: a missing
        # model fails `serve run` at once).
        tokenizer=config.resolve_model(config.validator.model) if config.tiering.verified_escalation else None,
        priority_scheduling=config.validator.scheduling_policy == "priority",
        replica_death_retries=config.validator.replica_death_retries)
    cache = build_cache(config, embedder, {"scout": scout, "validator": validator})
    parts = Parts(
        config=config,
        scout=scout,
        validator=validator,
        cache=ServeResponseCache(cache) if cache is not None else None,
        embedder=ServeEmbedder(embedder, config.cache.embedder.dimension) if embedder is not None else None,
    )
    return Ingress.options(**config.api.deployment.serve_options(ingress_replicas(config))).bind(parts)


def app_config(args: dict[str, Any] | None) -> AppConfig:
    """The configuration in a Serve application's `args`: a whole config, or just `{"profile": name}`."""
    args = dict(args or {})
    return load_profile(args["profile"]) if set(args) == {"profile"} else AppConfig(**args)


def ingress_replicas(config: AppConfig) -> dict[str, Any]:
    """The Ingress's replica options (`api.deployment`). Under cascade autoscaling it always autoscales (a fixed
    count becomes min = max): Ray Serve collects a deployment's custom autoscaling metrics
    (`Ingress.record_autoscaling_stats`) and shows them to an application policy only when it autoscales.

    The Ingress's whole `.options()`: `config.api.deployment.serve_options(ingress_replicas(config))`."""
    deployment = config.api.deployment
    options = deployment.replica_options()
    if not config.load.autoscaling.enabled:
        return options
    n = deployment.num_replicas
    scaling = options.get("autoscaling_config") or {"min_replicas": n, "initial_replicas": n, "max_replicas": n}
    # The figures are smoothed already (forecast, EWMAs): a short look-back keeps them fresh
    # (Ray wants it longer than its 10 s metrics interval).
    return {"autoscaling_config": {**scaling, "look_back_period_s": max(2 * config.load.interval_s, 20.0)}}


def application_autoscaling_policy(config: AppConfig) -> dict[str, Any] | None:
    """The Serve application's `autoscaling_policy` when `load.autoscaling.enabled`, else None.

    The Validator is scaled by the cascade (`serving.load.autoscaling.CascadeApplicationPolicy`, from
    the Ingress's figures); every other autoscaling deployment keeps Ray's request-based policy.
    Application-level policies are part of a Serve *config* (`serve run cluster/<profile>.yaml`,
    KubeRay's serveConfigV2; scripts/render_configs.py writes it into the profiles): `serve run
    deployments.app:build_app` cannot carry one, and the Validator then scales by its requests.
    """
    cascade = config.load.autoscaling
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
    return Embedder.options(**emb.deployment.serve_options()).bind(model_path, emb, config.load.batching)


def build_cache(config: AppConfig, embedder: Application | None,
                engines: dict[str, ServeLLMEngine] | None = None) -> Application | None:
    """The SemanticCache deployment over `embedder`, or None when the cache is off.

    Its similarity threshold is the one in force (`serving.policy.cache.threshold_in_force`): the
    calibrated one when the profile's calibration file has a cache part for this embedder (resolved
    here, in the driver: a file made for another embedder fails `serve run`). When `cache.verifier.model` names a
    cascade engine ('scout', 'validator'), that engine from `engines` is bound to it too."""
    if not config.cache.enabled or embedder is None:
        return None
    path = config.calibration_path()
    cache, _ = threshold_in_force(config.cache, Calibration.load(path) if path is not None else None)
    asked = config.cache.verifier.model
    bound = {asked: engines[asked]} if engines and asked in engines else None
    return SemanticCacheDeployment.options(**config.cache.deployment.serve_options()).bind(
        embedder, config.model_copy(update={"cache": cache}), bound)
