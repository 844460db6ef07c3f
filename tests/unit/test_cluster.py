"""Serve configs per profile (cluster/*.yaml) and the on-prem launcher config, checked offline.

The profiles' `deployments:` blocks are generated from their `args` (our AppConfig) by
scripts/render_configs.py; here they must equal what `serve build` makes of those args, so
that the block and the app can never disagree.
"""

from __future__ import annotations

import copy
import difflib
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from serving.config import AppConfig, AutoscalingConfig, load_profile, profile_names, profile_path
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import render_configs

DEPLOYMENTS = {"Ingress", "Scout", "Validator", "SemanticCache", "Embedder"}


# --- shared with test_k8s.py: Ray's Serve schemas ignore unknown keys, we do not ---------------------

def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def unknown_keys(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Keys in `data` that `model` (recursively) does not define: Ray's ServeDeploySchema accepts and
    silently drops them, so a misspelt `max_replica` would deploy with the default."""
    if not isinstance(data, dict):
        return []
    fields = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        if field.alias:
            fields[field.alias] = field
    found = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            found.append(where)
            continue
        models = _models_in(fields[key].annotation)
        if len(models) != 1:  # free-form (args, runtime_env, user_config) or ambiguous: not ours to judge
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            found += unknown_keys(models[0], item, f"{where}[{i}]" if isinstance(value, list) else where)
    return found


def check_serve_config(doc: dict[str, Any]) -> None:
    """Raise ValueError naming every problem of a Serve config: Ray's schema, unknown keys, our args."""
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(doc)
    except ValidationError as e:
        raise ValueError(f"not a valid Serve config: {e}") from e
    extra = unknown_keys(ServeDeploySchema, doc)
    if extra:
        raise ValueError(f"unknown keys in the Serve config (Ray would drop them silently): {extra}")
    for app in doc["applications"]:
        try:
            AppConfig(**app.get("args", {}))
        except ValidationError as e:
            raise ValueError(f"application {app.get('name')!r}: args are not a valid AppConfig: {e}") from e


# --- the profiles -----------------------------------------------------------------------------------

def drift(path: Path) -> str | None:
    """None when the profile's `deployments:` block is what `serve build` makes of its args, else a diff."""
    doc = yaml.safe_load(path.read_text())
    app = doc["applications"][0]
    have = app.get("deployments")
    want = render_configs.serve_build(app["args"])
    policy = render_configs.autoscaling_policy(app["args"])
    if app.get("autoscaling_policy") != policy:
        return (f"{path}: the application's autoscaling_policy is {app.get('autoscaling_policy')!r}, its args ask "
                f"for {policy!r}; run `python scripts/render_configs.py`.")
    if have == want:
        return None
    dump = lambda d: yaml.safe_dump(d, sort_keys=False).splitlines(True)  # noqa: E731
    diff = "".join(difflib.unified_diff(dump(have or []), dump(want), f"{path.name} (deployments)",
                                        "serve build of its args"))
    return (f"{path}: the deployments block drifted from `serve build` of the profile's args; "
            f"run `python scripts/render_configs.py`.\n{diff}")


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: render_configs.serve_build(yaml.safe_load(profile_path(name).read_text())["applications"][0]["args"])
            for name in profile_names()}


def test_profiles_are_serve_configs_and_the_launcher_config_is_not_one():
    names = profile_names()
    assert {"tiny", "laptop", "gpu-a100x4", "gpu-h100x8"} <= set(names)
    assert "onprem" not in names


@pytest.mark.parametrize("name", ["tiny", "laptop", "gpu-a100x4", "gpu-h100x8"])
def test_profile_deployments_match_serve_build(name):
    problem = drift(profile_path(name))
    assert problem is None, problem


@pytest.mark.parametrize("name", ["tiny", "laptop", "gpu-a100x4", "gpu-h100x8"])
def test_cascade_autoscaling_is_an_application_policy_over_a_measuring_ingress(name, built):
    """On: the application names the cascade policy with the profile's settings (Ray's own
    AutoscalingPolicy loads it, as the controller does) and the Ingress autoscales (its range, or its
    fixed count as min = max), which is what makes Ray collect its `record_autoscaling_stats`. Off: no
    policy, and the Ingress scales as its config says."""
    from ray.serve.config import AutoscalingPolicy

    from serving.load.autoscaling import CascadeApplicationPolicy

    cfg = load_profile(name)
    app = yaml.safe_load(profile_path(name).read_text())["applications"][0]
    ingress = next(d for d in built[name] if d["name"] == "Ingress")
    cascade = cfg.load.autoscaling
    if not cascade.enabled:
        assert "autoscaling_policy" not in app
        assert ingress["autoscaling_config"]["max_replicas"] == cfg.api.deployment.autoscaling.max_replicas
        return
    assert name.startswith("gpu-")  # the CPU profiles have one Validator: nothing to scale
    policy = AutoscalingPolicy(**app["autoscaling_policy"])
    loaded = policy.get_policy()
    assert loaded.__name__ == CascadeApplicationPolicy.__name__  # pickled by value, as Ray ships it
    instance = loaded(**policy.policy_kwargs)
    assert (instance.validator, instance.source) == ("Validator", "Ingress")
    assert instance.policy.config.model_dump(exclude={"enabled"}) == cascade.model_dump(exclude={"enabled"})
    assert cascade.target_ongoing_requests == cfg.validator.autoscaling.target_ongoing_requests
    # Ray applies the Validator's own delays on top of the policy: they must not swamp its decisions.
    validator = next(d for d in built[name] if d["name"] == "Validator")["autoscaling_config"]
    assert validator["downscale_delay_s"] <= cascade.downscale_delay_s and validator["upscale_delay_s"] <= 10
    scaling = ingress["autoscaling_config"]
    a = cfg.api.deployment.autoscaling
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (a.min_replicas, a.max_replicas)
    assert "num_replicas" not in ingress
    assert scaling["look_back_period_s"] > 10  # longer than Ray's metrics interval


def test_replicas_are_a_fixed_count_or_a_range_never_both():
    from deployments.app import ingress_replicas
    from serving.config.deployment import replica_options

    base = {"scout": {"model": "a"}, "validator": {"model": "b"}}
    assert replica_options(3, None) == {"num_replicas": 3}
    assert replica_options(1, AutoscalingConfig(min_replicas=0, max_replicas=4))["autoscaling_config"][
        "initial_replicas"] == 1
    # Under cascade autoscaling a fixed Ingress count still autoscales (min = max), so Ray collects its figures.
    cascade = {"analyzer": {"enabled": True}, "load": {"autoscaling": {"enabled": True}}}
    fixed = ingress_replicas(AppConfig(**base, **cascade, api={"deployment": {"num_replicas": 3}}))
    assert (fixed["autoscaling_config"]["min_replicas"], fixed["autoscaling_config"]["max_replicas"]) == (3, 3)
    ranged = ingress_replicas(AppConfig(**base, **cascade,
                                        api={"deployment": {"autoscaling": {"min_replicas": 2, "max_replicas": 5}}}))
    assert (ranged["autoscaling_config"]["min_replicas"], ranged["autoscaling_config"]["max_replicas"]) == (2, 5)
    assert ranged["autoscaling_config"]["look_back_period_s"] == 20.0  # 2 x load.interval_s, at least 20 s
    # Without cascade autoscaling the Ingress's own options stand.
    assert ingress_replicas(AppConfig(**base, api={"deployment": {"num_replicas": 3}})) == {"num_replicas": 3}
    # The same rule in every deployment's options: they are one model.
    both = {"deployment": {"num_replicas": 2, "autoscaling": {"max_replicas": 3}}}
    for args in ({"api": both}, {"cache": both}, {"cache": {"embedder": both}}):
        with pytest.raises(ValueError, match="not both"):
            AppConfig(**base, **args)
    # The Embedder autoscales by default: a fixed count says so by clearing the range.
    embedder = AppConfig(**base, cache={"embedder": {"deployment": {"num_replicas": 2, "autoscaling": None}}})
    assert embedder.cache.embedder.deployment.replica_options() == {"num_replicas": 2}
    with pytest.raises(ValueError, match="'edge'"):  # one process owns an edge store
        AppConfig(**base, cache={"enabled": True, "backend": "edge",
                                 "deployment": {"autoscaling": {"max_replicas": 2}}})


def test_drift_is_reported_with_the_fix(tmp_path):
    doc = yaml.safe_load(profile_path("gpu-a100x4").read_text())
    doc["applications"][0]["args"]["validator"]["autoscaling"]["max_replicas"] = 3
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(doc))
    problem = drift(path)
    assert problem and "render_configs.py" in problem and "+    max_replicas: 3" in problem
    doc["applications"][0]["args"]["load"]["autoscaling"]["horizon_s"] = 30
    path.write_text(yaml.safe_dump(doc))
    problem = drift(path)
    assert problem and "autoscaling_policy" in problem and "render_configs.py" in problem


@pytest.mark.parametrize("name", ["tiny", "laptop", "gpu-a100x4", "gpu-h100x8"])
def test_every_deployment_has_scaling_queue_limits_and_resources(name, built):
    deps = {d["name"]: d for d in built[name]}
    # The analyzer runs inside the Ingress: no deployment of its own, even where it is on.
    assert set(deps) == DEPLOYMENTS
    for d in deps.values():
        # Every deployment autoscales within a range (the edge cache's is 1..1: one process owns the store).
        assert "autoscaling_config" in d and "num_replicas" not in d, d["name"]
        scaling = d["autoscaling_config"]
        assert 0 <= scaling["min_replicas"] <= scaling["max_replicas"], d["name"]
        assert d["max_ongoing_requests"] >= 1 and d["max_queued_requests"] >= -1, d["name"]
        bundles = d.get("placement_group_bundles")
        assert d["ray_actor_options"]["num_cpus"] > 0 or (bundles and bundles[0]["CPU"] > 0), d["name"]
    cfg = load_profile(name)
    validator = deps["Validator"]
    assert validator["placement_group_strategy"] == "STRICT_PACK"
    assert len(validator["placement_group_bundles"]) == cfg.validator.tensor_parallel_size
    if cfg.validator.device == "gpu":
        assert all(b["GPU"] == 1 for b in validator["placement_group_bundles"])
        # Queues are bounded on the GPU profiles: overload answers 503 instead of growing latency.
        assert all(d["max_queued_requests"] > 0 for d in deps.values()), deps
    a = cfg.validator.autoscaling
    assert validator["autoscaling_config"]["max_replicas"] == a.max_replicas


@pytest.mark.parametrize("name", ["tiny", "laptop", "gpu-a100x4", "gpu-h100x8"])
def test_light_deployments_take_their_options_from_their_deployment_block(name, built):
    """Ingress, SemanticCache and Embedder: what Serve gets is their `deployment:` block (one model,
    `DeploymentOptions`), nothing else; the Ingress's replicas as `ingress_replicas` decides them."""
    from deployments.app import ingress_replicas

    cfg = load_profile(name)
    deps = {d["name"]: d for d in built[name]}
    sections = {"Ingress": (cfg.api.deployment, ingress_replicas(cfg)),
                "SemanticCache": (cfg.cache.deployment, None), "Embedder": (cfg.cache.embedder.deployment, None)}
    for deployment, (options, replicas) in sections.items():
        want = options.serve_options(replicas)
        have = deps[deployment]
        assert have["max_ongoing_requests"] == want["max_ongoing_requests"], deployment
        assert have["max_queued_requests"] == want["max_queued_requests"], deployment
        assert have["ray_actor_options"] == want["ray_actor_options"], deployment
        assert {k: have["autoscaling_config"][k] for k in want["autoscaling_config"]} == want["autoscaling_config"]


@pytest.mark.parametrize("name", ["tiny", "laptop", "gpu-a100x4", "gpu-h100x8"])
def test_profile_files_pass_the_strict_serve_check(name):
    doc = yaml.safe_load(profile_path(name).read_text())
    check_serve_config(doc)  # raises ValueError naming every problem
    assert doc["applications"][0]["args"]["profile"] == name


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["applications"][0]["deployments"][0].update(max_replica=3), "deployments[0].max_replica"),
    (lambda d: d["applications"][0]["deployments"][1]["autoscaling_config"].update(upscale_dely_s=1),
     "autoscaling_config.upscale_dely_s"),
    (lambda d: d.update(http_option={"port": 1}), "http_option"),
    (lambda d: d["applications"][0]["args"]["validator"].update(tensor_paralel_size=2), "not a valid AppConfig"),
    (lambda d: d["applications"][0]["deployments"][0].update(max_ongoing_requests="lots"), "not a valid Serve config"),
])
def test_strict_serve_check_rejects_broken_configs(edit, message):
    doc = yaml.safe_load(profile_path("gpu-a100x4").read_text())
    edit(doc)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_serve_config(doc)


def test_custom_resources_pin_replicas():
    """The Validator's custom resource lands in its first placement-group bundle (where ray.serve.llm
    puts the replica actor and its engine); the light deployments carry theirs as actor resources."""
    args = copy.deepcopy(load_profile("tiny").model_dump(mode="json"))
    args["validator"]["resources"] = {"infopt_gpu_node": 1}
    args["api"]["deployment"]["resources"] = {"infopt_cpu_node": 0.5}
    args["cache"]["embedder"]["deployment"]["resources"] = {"infopt_cpu_node": 0.5}
    deps = {d["name"]: d for d in render_configs.serve_build(args)}
    assert deps["Validator"]["placement_group_bundles"][0]["infopt_gpu_node"] == 1
    assert "infopt_gpu_node" not in str(deps["Scout"])
    assert deps["Ingress"]["ray_actor_options"]["resources"] == {"infopt_cpu_node": 0.5}
    assert deps["Embedder"]["ray_actor_options"]["resources"] == {"infopt_cpu_node": 0.5}


@pytest.mark.parametrize("resources", [{"GPU": 1}, {"CPU": 2}, {"infopt_gpu_node": -1}])
def test_builtin_or_negative_resources_are_rejected(resources):
    with pytest.raises(ValidationError, match="resources"):
        AppConfig(scout={"model": "a"}, validator={"model": "b", "resources": resources})
    for section in ({"api": {"deployment": {"resources": resources}}},
                    {"cache": {"embedder": {"deployment": {"resources": resources}}}}):
        with pytest.raises(ValidationError, match="resources"):
            AppConfig(scout={"model": "a"}, validator={"model": "b"}, **section)


# --- the on-prem launcher config ----------------------------------------------------------------------

ONPREM = REPO / "cluster" / "onprem.yaml"


def prepare_and_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before it touches a machine: Ray's own preparation, then its schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_onprem_config_passes_rays_own_validation():
    config = yaml.safe_load(ONPREM.read_text())
    prepared = prepare_and_validate(config)
    assert prepared["provider"]["type"] == "local"
    node_type = prepared["available_node_types"][prepared["head_node_type"]]
    # Ray keeps every listed worker of a manually managed cluster.
    assert node_type["min_workers"] == node_type["max_workers"] == len(config["provider"]["worker_ips"])
    setup = " ".join(prepared["worker_setup_commands"])
    assert "pip install" in setup and ".[gpu]" in setup
    assert any("--head" in c and "--num-gpus=0" in c for c in prepared["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP:6379" in c for c in prepared["worker_start_ray_commands"])


def _broken(edit: Any) -> dict[str, Any]:
    config = yaml.safe_load(ONPREM.read_text())
    edit(config)
    return config


@pytest.mark.parametrize(("config", "message"), [
    pytest.param(_broken(lambda c: c.update(setup_comands=["true"])), "'setup_comands' was unexpected",
                 id="misspelt-key"),
    pytest.param(_broken(lambda c: c["provider"].pop("head_ip")), "supply a `head_ip`", id="no-head-ip"),
    pytest.param(_broken(lambda c: c.update(idle_timeout_minutes="soon")), "'soon' is not of type 'number'",
                 id="wrong-type"),
    pytest.param(_broken(lambda c: c.update(available_node_types={"gpu": {"node_config": {}, "resources": {}}})),
                 "available_node_types is not supported for on-premise", id="node-types-on-local"),
])
def test_broken_onprem_configs_are_rejected(config, message):
    import click
    import jsonschema

    with pytest.raises((jsonschema.ValidationError, click.ClickException, ValueError)) as info:
        prepare_and_validate(config)
    text = info.value.message if isinstance(info.value, (jsonschema.ValidationError, click.ClickException)) else str(
        info.value)
    assert message in text



def test_the_chart_schema_accepts_overrides_of_every_deployment(built):
    """`serve.deployments[].name` in the chart's values schema names every deployment a profile builds."""
    import json

    schema = json.loads((REPO / "k8s" / "helm" / "inference-optimizer" / "values.schema.json").read_text())
    names = set(schema["properties"]["serve"]["properties"]["deployments"]["items"]["properties"]["name"]["enum"])
    assert {d["name"] for deployments in built.values() for d in deployments} <= names
