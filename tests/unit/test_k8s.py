"""The Helm chart, validated offline (no cluster, no helm binary).

Rendered with helm-python-sdk (Helm's own Go SDK; x86_64 wheels), linted strictly; core kinds
checked by kubernetes-validate --strict; the RayService against KubeRay's CRD with unknown
fields rejected wherever the CRD does not preserve them (the API server would silently drop
them); serveConfigV2 with Ray's ServeDeploySchema, a strict unknown-key check and our
AppConfig. Each validator also gets a broken manifest it must reject.
"""

from __future__ import annotations

import copy
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.config import profile_args
from tests.conftest import REPO, SHARED
from tests.unit.test_cluster import check_serve_config

sys.path.insert(0, str(REPO / "scripts"))
import render_configs

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) is missing")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (dev extra) is missing")
try:
    import helm_python as helm
except ImportError:  # the checks that need no rendering still run, on the committed example
    helm = None
HELM_MISSING = (f"helm-python-sdk ships x86_64 wheels only (this is {platform.machine()}): the chart is not rendered "
                "here; the other checks run on k8s/examples/rayservice.yaml")
needs_helm = pytest.mark.skipif(helm is None, reason=HELM_MISSING)

CHART = render_configs.CHART
CRDS = SHARED / "schemas" / "kuberay"
KUBE_VERSION = "1.32"
CORE_KINDS = {"Service", "StatefulSet", "Ingress"}
# Everything optional switched on: models from a PVC, a Qdrant API key, an Ingress, a ServiceMonitor.
ALL_ON = {
    "model": {"source": "pvc", "pvc": {"claimName": "models"}},
    "qdrant": {"apiKeySecretName": "qdrant-key"},
    "ingress": {"enabled": True, "className": "nginx", "tls": [{"secretName": "t", "hosts": ["infopt.example.com"]}]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "serve": {"deployments": [{"name": "Validator", "autoscaling_config": {"min_replicas": 2, "max_replicas": 4}}]},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name="infopt", namespace="default", is_install=True)
    return [doc for name, text in sorted(manifests.items()) if name.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    if helm is None:  # the example is the chart rendered with its defaults (a test keeps it fresh)
        return [d for d in yaml.safe_load_all(render_configs.EXAMPLE.read_text()) if d]
    return render()


@pytest.fixture(scope="module")
def all_on_docs() -> list[dict[str, Any]]:
    """The chart with every option on (nothing without helm: the example has the defaults only)."""
    return [] if helm is None else render(ALL_ON)


# --- helm lint, values schema ------------------------------------------------------------------------

@needs_helm
def test_chart_lints_strictly():
    for values in ({}, ALL_ON):
        report = helm.lint(str(CHART), values, strict=True)
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@needs_helm
@pytest.mark.parametrize(("template", "values", "message"), [
    ("name: {{ .Values.nameOverride | nosuchfunc }}", {}, 'function "nosuchfunc" not defined'),
    ("name: {{ .Values.missing.deeper }}", {}, "nil pointer evaluating"),
    (None, {"gpuWorkers": {"gpus": 2}}, "gpus"),  # against values.schema.json
    (None, {"serve": {"deployments": [{"name": "Validator", "autoscaling_config": {"max_replica": 4}}]}},
     "max_replica"),
])
def test_strict_lint_rejects_a_broken_chart(tmp_path, template, values, message):
    import shutil

    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    if template is not None:
        (chart / "templates" / "broken.yaml").write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  {template}\n")
    report = helm.lint(str(chart), values, strict=True)
    assert any(message in e for e in report["errors"]), report


def test_values_schema_is_generated_and_closed_everywhere():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema == json.loads(render_configs.render_values_schema()), \
        "values.schema.json is stale: run `python scripts/render_configs.py`"
    open_objects, free_form = [], set()

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(where)
            if node.get("type") == "object" and "properties" not in node and node.get("additionalProperties") in (
                    None, True, {}):
                free_form.add(where.replace("/anyOf/0", "").replace("/items", "").rsplit("/", 1)[-1])
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(schema, "")
    assert open_objects == []
    # Free-form by design only: keyword arguments, runtime environments, resource maps, user config,
    # and Kubernetes' node selector terms.
    assert free_form == {"user_config", "requiredDuringSchedulingIgnoredDuringExecution", "engine_kwargs",
                         "policy_kwargs", "init_kwargs", "actor_options", "runtime_env", "resources",
                         "fallback_strategy", "request_router_kwargs"}, free_form
    # serve.args is the app's own configuration schema.
    assert schema["properties"]["serve"]["properties"]["args"]["required"] == ["scout", "validator"]


@needs_helm
@pytest.mark.parametrize(("values", "where"), [
    ({"gpuWorkers": {"gpus": 2}}, "/gpuWorkers"),
    ({"serve": {"args": {"scout": {"model": "a", "temprature": 1}, "validator": {"model": "b"}}}}, "/serve/args/scout"),
    ({"serve": {"args": {"scout": {"model": "a"}, "validator": {"model": "b"}, "tiering": {"threshold": 2}}}},
     "/serve/args/tiering/threshold"),
    ({"serve": {"deployments": [{"name": "Validator", "max_replica": 3}]}}, "/serve/deployments/0"),
    ({"model": {"source": "s3"}}, "/model/source"),
    ({"head": {"tolerations": [{"key": "a", "operater": "Exists"}]}}, "/head/tolerations/0"),
    # Serve's own deployment options are closed too (Ray would silently drop these keys).
    ({"serve": {"deployments": [{"name": "Validator", "autoscaling_config": {"max_replica": 4}}]}},
     "/serve/deployments/0/autoscaling_config"),
    ({"serve": {"deployments": [{"name": "Embedder", "ray_actor_options": {"num_gpu": 1}}]}},
     "/serve/deployments/0/ray_actor_options"),
    ({"serve": {"deployments": [{"name": "Scout", "max_ongoing_request": 8}]}}, "/serve/deployments/0"),
    ({"serve": {"deployments": [{"name": "Validatr"}]}}, "/serve/deployments/0/name"),
    # The analyzer runs inside the Ingress: there is no RequestAnalyzer deployment to override.
    ({"serve": {"deployments": [{"name": "RequestAnalyzer"}]}}, "/serve/deployments/0/name"),
    # Keys that moved out of a section (priority classes, placement) fail `helm install` there.
    ({"serve": {"args": {"scout": {"model": "a"}, "validator": {"model": "b"}, "analyzer": {"priorities": {}}}}},
     "/serve/args/analyzer"),
    ({"serve": {"args": {"scout": {"model": "a"}, "validator": {"model": "b"}, "api": {"num_cpus": 1}}}},
     "/serve/args/api"),
    ({"serve": {"args": {"scout": {"model": "a"}, "validator": {"model": "b"},
                         "cache": {"deployment": {"num_cpu": 1}}}}}, "/serve/args/cache/deployment"),
    ({"cpuWorkers": {"affinity": {"nodeAffinity": {"required": {}}}}}, "/cpuWorkers/affinity/nodeAffinity"),
])
def test_values_schema_rejects_broken_values(values, where):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(values)


@needs_helm
def test_chart_args_are_the_gpu_profile():
    """One source of truth: the chart's default args are cluster/gpu-a100x4.yaml's."""
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.values["serve"]["args"] == profile_args("gpu-a100x4")


# --- what the chart makes ----------------------------------------------------------------------------

def test_default_render_has_the_expected_resources(default_docs):
    kinds = sorted(d["kind"] for d in default_docs)
    assert kinds == ["RayService", "Service", "Service", "Service", "StatefulSet"]
    svc = by_kind(default_docs, "RayService")[0]["spec"]
    cluster = svc["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert 0 < g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpu = groups["gpu"]["template"]["spec"]
    limits = gpu["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 4
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu" and gpu["nodeSelector"]
    # A Validator replica's tensor-parallel bundles are STRICT_PACKed on one pod: the pod has enough GPUs.
    args = yaml.safe_load(svc["serveConfigV2"])["applications"][0]["args"]
    assert limits["nvidia.com/gpu"] >= args["validator"]["tensor_parallel_size"]
    qdrant = by_kind(default_docs, "StatefulSet")[0]["spec"]
    assert qdrant["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_serve_config_v2_is_a_valid_serve_config_of_this_app(default_docs, all_on_docs):
    for docs in filter(None, (default_docs, all_on_docs)):
        doc = yaml.safe_load(by_kind(docs, "RayService")[0]["spec"]["serveConfigV2"])
        check_serve_config(doc)
        cache = doc["applications"][0]["args"]["cache"]
        # The GPU profile's cache backend 'server' is pointed at the chart's own Qdrant Service.
        assert cache["backend"] == "server"
        assert cache["url"] == "http://infopt-inference-optimizer-qdrant:6333"
        assert any(s["metadata"]["name"] == "infopt-inference-optimizer-qdrant" for s in by_kind(docs, "Service"))


def test_serve_config_v2_carries_the_cascade_autoscaling_policy(default_docs):
    """The chart writes the same application policy as the profiles (deployments.app), and none when off."""
    from deployments.app import application_autoscaling_policy
    from serving.config import AppConfig
    from serving.load.autoscaling import CascadeApplicationPolicy

    app = yaml.safe_load(by_kind(default_docs, "RayService")[0]["spec"]["serveConfigV2"])["applications"][0]
    want = application_autoscaling_policy(AppConfig(**app["args"]))
    assert want is not None and app["autoscaling_policy"]["policy_function"] == want["policy_function"]
    # The chart passes only the keys set in values; the rest are the same defaults.
    chart, ours = (CascadeApplicationPolicy(**p["policy_kwargs"]) for p in (app["autoscaling_policy"], want))
    assert (chart.validator, chart.source, chart.policy.config) == (ours.validator, ours.source, ours.policy.config)
    if helm is None:
        return  # "none when off" needs a render
    off = render({"serve": {"args": {"load": {"autoscaling": {"enabled": False}}}}})
    app = yaml.safe_load(by_kind(off, "RayService")[0]["spec"]["serveConfigV2"])["applications"][0]
    assert "autoscaling_policy" not in app and app["args"]["analyzer"]["enabled"] is True


def test_serve_config_v2_check_rejects_broken_configs(default_docs):
    rayservice = by_kind(default_docs, "RayService")[0]
    good = rayservice["spec"]["serveConfigV2"]
    broken = {  # what -> (config, what the message names)
        "unknown deployment key": (good + "    deployments:\n      - name: Validator\n        max_replica: 3\n",
                                   "applications[0].deployments[0].max_replica"),
        "unknown app key": (good.replace("    route_prefix: /", "    route_prefix: /\n    replicas: 2"),
                            "applications[0].replicas"),
        "bad args": (good.replace("tensor_parallel_size: 2", "tensor_parallel_size: 0"),
                     "validator.tensor_parallel_size"),
        "bad type": (good.replace("port: 8000", "port: eighty"), "http_options.port"),
    }
    for what, (text, message) in broken.items():
        assert text != good, what
        with pytest.raises(ValueError, match=re.escape(message)):
            check_serve_config(yaml.safe_load(text))
            pytest.fail(f"{what} was accepted")


@needs_helm
def test_optional_parts(all_on_docs):
    kinds = sorted(d["kind"] for d in all_on_docs)
    assert kinds == ["Ingress", "RayService", "Service", "Service", "Service", "ServiceMonitor", "StatefulSet"]
    ingress = by_kind(all_on_docs, "Ingress")[0]["spec"]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "infopt-inference-optimizer-serve-svc", "port": {"number": 8000}}
    monitor = by_kind(all_on_docs, "ServiceMonitor")[0]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    metrics_svc = next(s for s in by_kind(all_on_docs, "Service") if s["metadata"]["name"].endswith("-ray-metrics"))
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()
    pod = by_kind(all_on_docs, "RayService")[0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "INFOPT_CACHE__API_KEY" in env and "HF_TOKEN" not in env
    hub = render({"model": {"hub": {"tokenSecretName": "hf"}}})
    env = by_kind(hub, "RayService")[0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}} in env


@needs_helm
def test_pvc_source_needs_a_claim():
    with pytest.raises(helm.HelmRenderError, match=r"model\.pvc\.claimName is required"):
        render({"model": {"source": "pvc"}})


# --- kubernetes-validate --strict for core kinds --------------------------------------------------------

def test_core_kinds_pass_kubernetes_validate_strict(default_docs, all_on_docs):
    checked = set()
    for doc in default_docs + all_on_docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            checked.add(doc["kind"])
    assert checked == (CORE_KINDS if helm is not None else CORE_KINDS - {"Ingress"})  # Ingress: optional


@pytest.mark.parametrize(("kind", "edit", "message"), [
    ("StatefulSet", lambda d: d["spec"].update(replica=2), "replica"),  # misspelt: strict mode only
    ("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolice="Always"),
     "imagePullPolice"),
    ("StatefulSet", lambda d: d["spec"].update(replicas="one"), "'one' is not of type"),
    ("Service", lambda d: d["spec"]["ports"][0].update(port="http"), "'http' is not of type"),
    ("Service", lambda d: d["spec"].update(selectors={}), "selectors"),
])
def test_kubernetes_validate_rejects_broken_manifests(default_docs, kind, edit, message):
    doc = copy.deepcopy(by_kind(default_docs, kind)[0])
    edit(doc)
    with pytest.raises(kubernetes_validate.ValidationError) as info:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert message in str(info.value)


# --- the RayService against KubeRay's CRD ------------------------------------------------------------

def strict_crd_schema(schema: Any) -> Any:
    """The CRD's openAPIV3Schema with `additionalProperties: false` on every object that lists its
    properties and does not set x-kubernetes-preserve-unknown-fields (where the API server would prune)."""
    if isinstance(schema, dict):
        schema = {k: strict_crd_schema(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict_crd_schema(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def rayservice_validator() -> Any:
    path = CRDS / "ray.io_rayservices.yaml"
    if not path.exists():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (the shared/ folder beside the repo)")
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict_crd_schema(version["schema"]["openAPIV3Schema"]))


def crd_errors(validator: Any, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_rayservice_matches_the_kuberay_crd(rayservice_validator, default_docs, all_on_docs):
    for docs in filter(None, (default_docs, all_on_docs)):
        rayservice = by_kind(docs, "RayService")[0]
        assert rayservice["apiVersion"] == "ray.io/v1"
        assert crd_errors(rayservice_validator, rayservice) == []


@pytest.mark.parametrize(("edit", "where"), [
    (lambda s: s["rayClusterConfig"]["headGroupSpec"].update(rayStartParam={}), "headGroupSpec"),
    (lambda s: s["rayClusterConfig"]["workerGroupSpecs"][1].update(maxReplica=3), "workerGroupSpecs/1"),
    (lambda s: s["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0].update(
        gpus=1), "containers/0"),
    (lambda s: s.update(serveConfig="applications: []"), "spec"),
    (lambda s: s["rayClusterConfig"].update(enableInTreeAutoscaling="yes"), "enableInTreeAutoscaling"),
])
def test_crd_check_rejects_unknown_and_mistyped_fields(rayservice_validator, default_docs, edit, where):
    rayservice = copy.deepcopy(by_kind(default_docs, "RayService")[0])
    edit(rayservice["spec"])
    errors = crd_errors(rayservice_validator, rayservice)
    assert errors and any(where in e for e in errors), errors


# --- the rendered example for users without Helm -------------------------------------------------------

@needs_helm
def test_example_is_a_fresh_render():
    example = Path(render_configs.EXAMPLE)
    assert example.read_text() == render_configs.render_chart(), \
        "k8s/examples/rayservice.yaml is stale: run `python scripts/render_configs.py`"
