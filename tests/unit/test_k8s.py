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
CORE_KINDS = {"Service", "StatefulSet", "Ingress", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap"}
OPTIONAL_KINDS = {"Ingress", "PodDisruptionBudget", "ConfigMap"}  # off by default
NAMESPACE = "default"
# Everything optional switched on: models from a PVC, a Qdrant API key, an Ingress, a ServiceMonitor, API keys
# and the Ray token from Secrets, narrowed NetworkPolicies, PodDisruptionBudgets, GCS fault tolerance.
ALL_ON = {
    "model": {"source": "pvc", "pvc": {"claimName": "models"}},
    "qdrant": {"apiKeySecretName": "qdrant-key"},
    "ingress": {"enabled": True, "className": "nginx", "tls": [{"secretName": "t", "hosts": ["infopt.example.com"]}]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Inference Optimizer"}}},
    "serve": {"deployments": [{"name": "Validator", "autoscaling_config": {"min_replicas": 2, "max_replicas": 4}}]},
    "ray": {"auth": {"tokenSecretName": "ray-token"}},
    "apiKeys": {"secretName": "infopt-api-keys", "tenants": {"acme": {"secretKey": "acme"}},
                "admin": [{"secretKey": "admin"}]},
    "networkPolicy": {"ingressFrom": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "ingress-nginx"}}}],
                      "dashboardFrom": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]},
    "podDisruptionBudget": {"enabled": True},
    "gcsFaultTolerance": {"enabled": True, "redisAddress": "redis-ha:6379", "redisPasswordSecretName": "redis"},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name="infopt", namespace=NAMESPACE, is_install=True)
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
    # Hardening: a misspelt security setting must not pass silently (the API server would drop it).
    ({"ray": {"containerSecurityContext": {"readOnlyRootFileSystem": True}}}, "/ray/containerSecurityContext"),
    ({"qdrant": {"podSecurityContext": {"seccompProfile": {"type": "Default"}}}},
     "/qdrant/podSecurityContext/seccompProfile/type"),
    ({"ray": {"writableDirs": {"tmp": "tmp"}}}, "/ray/writableDirs/tmp"),
    ({"networkPolicy": {"ingressFrom": [{"namespaceSelectors": {}}]}}, "/networkPolicy/ingressFrom/0"),
    ({"podDisruptionBudget": {"workers": {"maxUnavailable": "half"}}}, "/podDisruptionBudget/workers/maxUnavailable"),
    # Secrets are referenced, never given: no field takes a plain password or API key.
    ({"gcsFaultTolerance": {"enabled": True, "redisPassword": "hunter2"}}, "/gcsFaultTolerance"),
    ({"ray": {"auth": {"token": "abc"}}}, "/ray/auth"),
    ({"apiKeys": {"tenants": {"acme": {"key": "sk-plain"}}}}, "/apiKeys/tenants/acme"),
    ({"apiKeys": {"admin": [{"secretName": "s"}]}}, "/apiKeys/admin/0"),
    ({"serve": {"args": {"scout": {"model": "a"}, "validator": {"model": "b"},
                         "auth": {"admin_keys": [{"value": "sk-plain"}]}}}}, "/serve/args/auth/admin_keys/0"),
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
    assert kinds == ["NetworkPolicy", "NetworkPolicy", "RayService", "Service", "Service", "Service", "StatefulSet"]
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
    assert kinds == ["ConfigMap", "Ingress", "NetworkPolicy", "NetworkPolicy", "PodDisruptionBudget",
                     "PodDisruptionBudget", "PodDisruptionBudget", "RayService", "Service", "Service", "Service",
                     "ServiceMonitor", "StatefulSet"]
    ingress = by_kind(all_on_docs, "Ingress")[0]["spec"]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "infopt-inference-optimizer-serve-svc", "port": {"number": 8000}}
    monitor = by_kind(all_on_docs, "ServiceMonitor")[0]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    metrics_svc = next(s for s in by_kind(all_on_docs, "Service") if s["metadata"]["name"].endswith("-ray-metrics"))
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()
    # The Grafana dashboard, for the sidecar: its label, and the JSON the generator writes, unchanged.
    board = by_kind(all_on_docs, "ConfigMap")[0]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["annotations"] == {"grafana_folder": "Inference Optimizer"}
    assert json.loads(board["data"]["infopt.json"]) == json.loads((CHART / "dashboards" / "infopt.json").read_text())
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


# --- hardening: security contexts, NetworkPolicies, Ray token, Secrets, PDBs, GCS fault tolerance ----------

RAY_RW_DIRS = {"/tmp", "/home/ray/.cache", "/home/ray/.config", "/home/ray/.triton", "/home/ray/.nv"}
QDRANT_RW_DIRS = {"/qdrant/storage", "/qdrant/snapshots", "/tmp"}
# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}


def ray_cluster(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod the release makes, by role, with the labels it will carry (KubeRay adds its own to Ray pods)
    and the containers KubeRay adds from the chart's options (the autoscaler sidecar)."""
    cluster = ray_cluster(docs)
    head = copy.deepcopy(cluster["headGroupSpec"]["template"])
    head["metadata"]["labels"].update({"ray.io/node-type": "head", "ray.io/group": "headgroup",
                                       "ray.io/is-ray-node": "yes"})
    if cluster.get("enableInTreeAutoscaling"):
        options = cluster.get("autoscalerOptions", {})
        head["spec"]["containers"].append({"name": "autoscaler", "securityContext": options.get("securityContext"),
                                           "volumeMounts": options.get("volumeMounts", [])})
    out = {"head": head}
    for group in cluster["workerGroupSpecs"]:
        pod = copy.deepcopy(group["template"])
        pod["metadata"]["labels"].update({"ray.io/node-type": "worker", "ray.io/group": group["groupName"],
                                          "ray.io/is-ray-node": "yes"})
        out[f"worker-{group['groupName']}"] = pod
    for sts in by_kind(docs, "StatefulSet"):
        out[sts["metadata"]["name"].rsplit("-", 1)[-1]] = sts["spec"]["template"]
    return out


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod breaks the "restricted" Pod Security Standard, or leaves its root file system writable."""
    spec, found = pod["spec"], []
    pod_sc = spec.get("securityContext") or {}
    for volume in spec.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            found.append(f"volume {sorted(set(volume) - {'name'})}: {volume['name']}")
    for c in spec["containers"] + spec.get("initContainers", []):
        sc, name = c.get("securityContext") or {}, c["name"]
        caps = sc.get("capabilities") or {}
        checks = {
            "privileged": not sc.get("privileged"),
            "allowPrivilegeEscalation": sc.get("allowPrivilegeEscalation") is False,
            "capabilities.drop ALL": "ALL" in (caps.get("drop") or []),
            "capabilities.add": set(caps.get("add") or []) <= {"NET_BIND_SERVICE"},
            "runAsNonRoot": sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True,
            "runAsUser 0": sc.get("runAsUser", pod_sc.get("runAsUser")) != 0,
            "seccompProfile": (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
                              in ("RuntimeDefault", "Localhost"),
            "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        }
        found += [f"{name}: {what}" for what, ok in checks.items() if not ok]
    return found


def test_every_pod_and_container_runs_restricted(default_docs, all_on_docs):
    """Not root, no privilege escalation, no capabilities, seccomp RuntimeDefault, read-only root file system:
    on Qdrant, the Ray head (with KubeRay's autoscaler sidecar) and every worker group."""
    for docs in filter(None, (default_docs, all_on_docs)):
        found = pods(docs)
        assert set(found) == {"head", "worker-cpu", "worker-gpu", "qdrant"}
        for role, pod in found.items():
            assert restricted_violations(pod) == [], role
            sc = pod["spec"]["securityContext"]
            assert sc["runAsUser"] == 1000 and sc["runAsNonRoot"] is True, role
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, role
        assert found["head"]["spec"]["securityContext"]["runAsGroup"] == 100  # the Ray image's `users` group
        assert found["head"]["spec"]["containers"][-1]["name"] == "autoscaler"


def test_restricted_check_rejects_broken_pods(default_docs):
    pod = pods(default_docs)["worker-gpu"]
    breaks = {  # edit -> what the check must name
        "runAsNonRoot": lambda s: [sc.pop("runAsNonRoot") for sc in (s["securityContext"],
                                                                     s["containers"][0]["securityContext"])],
        "runAsUser 0": lambda s: s["containers"][0]["securityContext"].update(runAsUser=0),
        "allowPrivilegeEscalation": lambda s: s["containers"][0]["securityContext"].update(
            allowPrivilegeEscalation=True),
        "capabilities.add": lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "seccompProfile": lambda s: s["securityContext"].pop("seccompProfile"),
        "readOnlyRootFilesystem": lambda s: s["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
        "volume ['hostPath']": lambda s: s["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
    }
    for what, edit in breaks.items():
        broken = copy.deepcopy(pod)
        edit(broken["spec"])
        assert any(what in v for v in restricted_violations(broken)), what


def test_read_only_containers_have_their_writable_folders(default_docs, all_on_docs):
    """A read-only root file system works only if every folder the programs write is a volume."""
    for docs in filter(None, (default_docs, all_on_docs)):
        for role, pod in pods(docs).items():
            volumes = {v["name"] for v in pod["spec"]["volumes"]} | {
                c["metadata"]["name"] for c in by_kind(docs, "StatefulSet")[0]["spec"]["volumeClaimTemplates"]}
            for c in pod["spec"]["containers"]:
                mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
                assert {m["name"] for m in mounts.values()} <= volumes, (role, c["name"])
                assert all(not m.get("readOnly") for path, m in mounts.items() if path != "/models")
                want = QDRANT_RW_DIRS if role == "qdrant" else RAY_RW_DIRS if c["name"] != "autoscaler" else {"/tmp"}
                assert want <= set(mounts), (role, c["name"], sorted(mounts))
        qdrant = pods(docs)["qdrant"]["spec"]["containers"][0]
        init_file = next(e["value"] for e in qdrant["env"] if e["name"] == "QDRANT_INIT_FILE_PATH")
        assert init_file.startswith("/tmp/")


@needs_helm
def test_security_contexts_and_writable_folders_are_configurable():
    docs = render({"ray": {"containerSecurityContext": {"readOnlyRootFilesystem": False},
                           "writableDirs": {"nv": None, "deepgemm": "/home/ray/.deep_gemm"}},
                   "qdrant": {"podSecurityContext": {"runAsUser": 2000, "runAsGroup": 2000, "fsGroup": 2000}}})
    found = pods(docs)
    worker = found["worker-gpu"]["spec"]
    assert worker["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    assert worker["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # the rest stays
    mounts = {m["mountPath"]: m["name"] for m in worker["containers"][0]["volumeMounts"]}
    assert mounts["/home/ray/.deep_gemm"] == "rw-deepgemm" and "/home/ray/.nv" not in mounts
    assert {"name": "rw-deepgemm", "emptyDir": {}} in worker["volumes"]
    assert found["qdrant"]["spec"]["securityContext"]["runAsUser"] == 2000
    assert found["qdrant"]["spec"]["securityContext"]["runAsNonRoot"] is True


# NetworkPolicy semantics, enough of them to answer "may this source reach that pod on that port?".

def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        have = e["key"] in labels
        ok = {"In": have and labels[e["key"]] in e.get("values", []),
              "NotIn": not have or labels[e["key"]] not in e.get("values", []),
              "Exists": have, "DoesNotExist": not have}[e["operator"]]
        if not ok:
            return False
    return True


def peer_matches(peer: dict[str, Any], source: dict[str, Any]) -> bool:
    if "ipBlock" in peer:
        import ipaddress

        return "ip" in source and ipaddress.ip_address(source["ip"]) in ipaddress.ip_network(peer["ipBlock"]["cidr"])
    if "labels" not in source:
        return False
    if "namespaceSelector" in peer:
        ns_ok = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source["namespace"]})
    else:
        ns_ok = source["namespace"] == NAMESPACE
    return ns_ok and ("podSelector" not in peer or selects(peer["podSelector"], source["labels"]))


def admitted(docs: list[dict[str, Any]], target: dict[str, str], port: int, source: dict[str, Any]) -> bool:
    """Whether the release's NetworkPolicies let `source` ({labels, namespace} or {ip}) reach a pod labelled
    `target` on `port` (no policy selecting the pod: everything may)."""
    policies = [p["spec"] for p in by_kind(docs, "NetworkPolicy") if selects(p["spec"]["podSelector"], target)]
    if not policies:
        return True
    for policy in policies:
        assert policy["policyTypes"] == ["Ingress"]  # egress stays open (hub downloads, Redis, the API server)
        for rule in policy.get("ingress") or []:
            if rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
                continue
            if not rule.get("from") or any(peer_matches(peer, source) for peer in rule["from"]):
                return True
    return False


def pod_source(labels: dict[str, str], namespace: str = NAMESPACE) -> dict[str, Any]:
    return {"labels": labels, "namespace": namespace}


STRANGER = pod_source({"app": "curl"}, "elsewhere")
NEIGHBOUR = pod_source({"app": "other"})  # same namespace, not this release
OPERATOR = pod_source({"app.kubernetes.io/name": "kuberay-operator"}, "kuberay-system")
PROMETHEUS = pod_source({"app.kubernetes.io/name": "prometheus"}, "monitoring")
INGRESS_NGINX = pod_source({"app": "ingress-nginx"}, "ingress-nginx")
RAY_PORTS = (6379, 8265, 10001, 8080, 52365)  # GCS, dashboard, client, metrics, dashboard agent


def test_network_policies_open_only_the_serve_port(default_docs):
    """By default, from outside the release: the Serve port from anywhere, the dashboard from the KubeRay
    operator only, nothing else; Ray pods reach each other everywhere; Qdrant only from Ray pods."""
    found = pods(default_docs)
    ray_roles = [r for r in found if r != "qdrant"]
    qdrant = found["qdrant"]["metadata"]["labels"]
    # Qdrant's pod carries the release's labels, but it is no Ray pod.
    outsiders = (STRANGER, NEIGHBOUR, PROMETHEUS, pod_source(qdrant))
    for role in ray_roles:
        target = found[role]["metadata"]["labels"]
        for source in outsiders:
            assert admitted(default_docs, target, 8000, source), role
            assert not any(admitted(default_docs, target, port, source) for port in RAY_PORTS), (role, source)
        assert admitted(default_docs, target, 8265, OPERATOR) and not admitted(default_docs, target, 6379, OPERATOR)
        for peer in ray_roles:  # head <-> workers, workers <-> workers: every port
            source = pod_source(found[peer]["metadata"]["labels"])
            assert all(admitted(default_docs, target, port, source) for port in (*RAY_PORTS, 8000, 40123))
    for role in ray_roles:
        source = pod_source(found[role]["metadata"]["labels"])
        assert admitted(default_docs, qdrant, 6333, source) and admitted(default_docs, qdrant, 6334, source)
        assert not admitted(default_docs, qdrant, 6335, source)
    for outsider in (STRANGER, NEIGHBOUR, OPERATOR, PROMETHEUS, {"ip": "10.1.2.3"}):
        assert not admitted(default_docs, qdrant, 6333, outsider)
    # Another release's Ray pods in the same namespace are outsiders too.
    other = dict(found["head"]["metadata"]["labels"], **{"app.kubernetes.io/instance": "other"})
    assert not admitted(default_docs, found["head"]["metadata"]["labels"], 6379, pod_source(other))
    assert not admitted(default_docs, qdrant, 6333, pod_source(other))


@needs_helm
def test_network_policies_follow_their_values(all_on_docs):
    found = pods(all_on_docs)
    head, worker = found["head"]["metadata"]["labels"], found["worker-cpu"]["metadata"]["labels"]
    # ingressFrom narrows the Serve port to the ingress controller's namespace.
    assert admitted(all_on_docs, worker, 8000, INGRESS_NGINX) and not admitted(all_on_docs, worker, 8000, STRANGER)
    # The ServiceMonitor's Prometheus may scrape every Ray pod, nothing else may.
    assert admitted(all_on_docs, worker, 8080, PROMETHEUS) and not admitted(all_on_docs, worker, 8080, INGRESS_NGINX)
    assert not admitted(all_on_docs, worker, 6379, PROMETHEUS)
    # dashboardFrom adds peers to the operator's.
    assert admitted(all_on_docs, head, 8265, {"ip": "10.1.7.7"}) and admitted(all_on_docs, head, 8265, OPERATOR)
    assert not admitted(all_on_docs, head, 8265, {"ip": "10.2.0.1"})
    assert by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []
    with pytest.raises(helm.HelmRenderError, match=r"networkPolicy\.metricsFrom must name Prometheus"):
        render({"metrics": {"serviceMonitor": {"enabled": True}}, "networkPolicy": {"metricsFrom": []}})
    with pytest.raises(helm.HelmRenderError, match="KubeRay operator could not reach the dashboard"):
        render({"networkPolicy": {"kuberayOperatorFrom": []}})


@needs_helm
def test_network_policy_check_rejects_open_policies(default_docs):
    """The evaluator above is what the two tests rely on: it must see a policy that opens too much."""
    head = pods(default_docs)["head"]["metadata"]["labels"]
    docs = copy.deepcopy(default_docs)
    ray_policy = next(p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-ray"))
    ray_policy["spec"]["ingress"][2].pop("from")  # the dashboard rule, from anyone
    assert admitted(docs, head, 8265, STRANGER) and not admitted(default_docs, head, 8265, STRANGER)
    ray_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].pop("app.kubernetes.io/instance")
    other = dict(head, **{"app.kubernetes.io/instance": "other"})
    assert admitted(docs, head, 6379, pod_source(other))


def test_ray_token_auth_uses_kuberay_auth_options(rayservice_validator, default_docs):
    """KubeRay's CRD has `authOptions`: the chart turns token auth on there (KubeRay then sets the token in
    every Ray container and authenticates its own dashboard calls), never with a token in the manifest."""
    crd = yaml.safe_load((CRDS / "ray.io_rayservices.yaml").read_text())
    spec = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    auth = spec["properties"]["spec"]["properties"]["rayClusterConfig"]["properties"]["authOptions"]
    assert "token" in auth["properties"]["mode"]["enum"] and "secretName" in auth["properties"]
    assert ray_cluster(default_docs)["authOptions"] == {"mode": "token"}
    for pod in pods(default_docs).values():
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & {e["name"] for c in pod["spec"]["containers"]
                                                          for e in c.get("env", [])}
    if helm is None:
        return
    assert ray_cluster(render({"ray": {"auth": {"tokenSecretName": "ray-token"}}}))["authOptions"] == {
        "mode": "token", "secretName": "ray-token"}
    assert "authOptions" not in ray_cluster(render({"ray": {"auth": {"enabled": False}}}))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def test_qdrant_api_key_reaches_server_and_every_ray_pod(default_docs, all_on_docs):
    """qdrant.apiKeySecretName: the server's QDRANT__SERVICE__API_KEY and the app's INFOPT_CACHE__API_KEY,
    on every Ray container (SemanticCache replicas run on any worker), both from the same Secret key."""
    ref = {"secretKeyRef": {"name": "qdrant-key", "key": "api-key"}}
    for docs, on in ((default_docs, False), (all_on_docs, True)):
        if not docs:
            continue
        for role, pod in pods(docs).items():
            if role == "qdrant":
                env = env_of(pod["spec"]["containers"][0])
                assert (env.get("QDRANT__SERVICE__API_KEY", {}).get("valueFrom") == ref) is on
                continue
            container = pod["spec"]["containers"][0]
            assert (env_of(container).get("INFOPT_CACHE__API_KEY", {}).get("valueFrom") == ref) is on, role


API_KEYS = {"secretName": "infopt-api-keys",
            "tenants": {"acme": {"secretKey": "acme-key"},
                        "beta-co": [{"secretKey": "beta-key"}, {"secretKey": "beta-next", "secretName": "rotation"}]},
            "admin": [{"secretKey": "admin-key"}]}
# Settings of those tenants in serve.args (namespaces, limits, one key already given as a digest).
AUTH_ARGS = {"tenants": {"acme": {"requests_per_s": 5.0, "namespace": "acme-ns"},
                         "beta-co": {"keys": [{"sha256": "ab" * 32}], "budget_engine_s": 3600.0}},
             "limits_storage": "redis://limits:6379"}


@needs_helm
def test_api_keys_come_from_secrets_by_environment_variable(monkeypatch):
    docs = render({"apiKeys": API_KEYS, "serve": {"args": {"auth": AUTH_ARGS}}})
    rayservice = by_kind(docs, "RayService")[0]
    text = rayservice["spec"]["serveConfigV2"]
    auth = yaml.safe_load(text)["applications"][0]["args"]["auth"]
    # Merged with the tenants' settings from serve.args; the chart only adds `env` references.
    assert auth == {
        "tenants": {"acme": {"requests_per_s": 5.0, "namespace": "acme-ns", "keys": [{"env": "INFOPT_KEY_ACME"}]},
                    "beta-co": {"budget_engine_s": 3600.0, "keys": [
                        {"sha256": "ab" * 32}, {"env": "INFOPT_KEY_BETA_CO"}, {"env": "INFOPT_KEY_BETA_CO_1"}]}},
        "admin_keys": [{"env": "INFOPT_ADMIN_KEY"}], "limits_storage": "redis://limits:6379"}
    # serveConfigV2 names neither the Secrets nor their keys: only environment variables.
    for word in ("infopt-api-keys", "rotation", "acme-key", "beta-key", "beta-next", "admin-key", "secretKeyRef"):
        assert word not in text
    want = {"INFOPT_KEY_ACME": ("infopt-api-keys", "acme-key"), "INFOPT_KEY_BETA_CO": ("infopt-api-keys", "beta-key"),
            "INFOPT_KEY_BETA_CO_1": ("rotation", "beta-next"), "INFOPT_ADMIN_KEY": ("infopt-api-keys", "admin-key")}
    for role, pod in pods(docs).items():
        if role == "qdrant":
            assert not set(want) & set(env_of(pod["spec"]["containers"][0]))
            continue
        env = env_of(pod["spec"]["containers"][0])
        for name, (secret, key) in want.items():
            assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}, role
    # The app resolves them: a key set in the environment (as the Secret would) is the tenant's key.
    from serving.config import AppConfig, key_digest

    config = AppConfig(**yaml.safe_load(text)["applications"][0]["args"])
    monkeypatch.setenv("INFOPT_KEY_ACME", "sk-acme-secret")
    assert [k.digest() for k in config.auth.tenants["acme"].keys] == [key_digest("sk-acme-secret")]


@needs_helm
def test_no_secret_value_can_reach_the_serve_config():
    """The chart never reads a Secret (no `lookup`), no value of it takes a key or password, and every key
    in the rendered serveConfigV2 is a digest, an environment variable or a file."""
    for template in (CHART / "templates").iterdir():
        assert "lookup" not in template.read_text(), template.name
    docs = render({**ALL_ON, "apiKeys": API_KEYS, "serve": {"args": {"auth": AUTH_ARGS}}})
    auth = yaml.safe_load(by_kind(docs, "RayService")[0]["spec"]["serveConfigV2"])["applications"][0]["args"]["auth"]
    keys = [k for t in auth["tenants"].values() for k in t["keys"]] + auth["admin_keys"]
    assert keys and all(set(k) <= {"sha256", "env", "file"} for k in keys)
    for c in [c for p in pods(docs).values() for c in p["spec"]["containers"]]:  # no plain secret-looking value
        for e in c.get("env", []):
            if re.search("KEY|TOKEN|PASSWORD", e["name"]):
                assert "value" not in e, (c["name"], e["name"])


@needs_helm
@pytest.mark.parametrize(("values", "message"), [
    ({"serve": {"args": {"auth": {"tenants": {"solo": {"requests_per_s": 1.0}}}}}},
     r"serve\.args\.auth\.tenants\.solo has no keys"),
    ({"apiKeys": {"tenants": {"acme": {"secretKey": "k"}}}}, r"apiKeys\.secretName .* is required"),
    ({"apiKeys": {"secretName": "s", "tenants": {"a-b": {"secretKey": "k1"}, "a.b": {"secretKey": "k2"}}}},
     "share the environment variable INFOPT_KEY_A_B"),
])
def test_api_key_mistakes_fail_the_render(values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render(values)


@needs_helm
def test_pod_disruption_budgets_cover_qdrant_and_the_workers_not_the_head(default_docs, all_on_docs):
    assert by_kind(default_docs, "PodDisruptionBudget") == []
    found = pods(all_on_docs)
    budgets = {b["metadata"]["name"]: b["spec"] for b in by_kind(all_on_docs, "PodDisruptionBudget")}
    covered = {role for role, pod in found.items() for b in budgets.values()
               if selects(b["selector"], pod["metadata"]["labels"])}
    assert covered == {"qdrant", "worker-cpu", "worker-gpu"}
    assert budgets["infopt-inference-optimizer-qdrant"]["maxUnavailable"] == 0
    for group in ("cpu", "gpu"):
        spec = budgets[f"infopt-inference-optimizer-ray-{group}"]
        assert spec["maxUnavailable"] == 1
        # By KubeRay's labels: the pods of every RayCluster the RayService makes, of this group only.
        assert spec["selector"]["matchLabels"]["ray.io/group"] == group
        assert spec["selector"]["matchLabels"]["ray.io/node-type"] == "worker"
        assert "ray.io/cluster" not in spec["selector"]["matchLabels"]
    percent = render({"podDisruptionBudget": {"enabled": True, "workers": {"maxUnavailable": "50%"}},
                      "gpuWorkers": {"enabled": False}})
    workers = [b for b in by_kind(percent, "PodDisruptionBudget") if "-ray-" in b["metadata"]["name"]]
    assert [b["spec"]["maxUnavailable"] for b in workers] == ["50%"]


@needs_helm
def test_gcs_fault_tolerance_is_kuberays_redis_option(default_docs, all_on_docs):
    assert "gcsFaultToleranceOptions" not in ray_cluster(default_docs)
    assert ray_cluster(all_on_docs)["gcsFaultToleranceOptions"] == {
        "redisAddress": "redis-ha:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis", "key": "password"}}}}
    # KubeRay refuses a head that also sets these itself.
    head_env = env_of(ray_cluster(all_on_docs)["headGroupSpec"]["template"]["spec"]["containers"][0])
    assert not {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS"} & set(head_env)
    namespaced = render({"gcsFaultTolerance": {"enabled": True, "redisAddress": "rediss://r:6380",
                                               "externalStorageNamespace": "infopt"}})
    assert ray_cluster(namespaced)["gcsFaultToleranceOptions"] == {"redisAddress": "rediss://r:6380",
                                                                   "externalStorageNamespace": "infopt"}
    with pytest.raises(helm.HelmRenderError, match=r"gcsFaultTolerance\.redisAddress is required"):
        render({"gcsFaultTolerance": {"enabled": True}})


# --- kubernetes-validate --strict for core kinds --------------------------------------------------------

def test_core_kinds_pass_kubernetes_validate_strict(default_docs, all_on_docs):
    checked = set()
    for doc in default_docs + all_on_docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            checked.add(doc["kind"])
    assert checked == (CORE_KINDS if helm is not None else CORE_KINDS - OPTIONAL_KINDS)


@pytest.mark.parametrize(("kind", "edit", "message"), [
    ("StatefulSet", lambda d: d["spec"].update(replica=2), "replica"),  # misspelt: strict mode only
    ("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolice="Always"),
     "imagePullPolice"),
    ("StatefulSet", lambda d: d["spec"].update(replicas="one"), "'one' is not of type"),
    ("Service", lambda d: d["spec"]["ports"][0].update(port="http"), "'http' is not of type"),
    ("Service", lambda d: d["spec"].update(selectors={}), "selectors"),
    ("NetworkPolicy", lambda d: d["spec"]["ingress"][0].update(form=[]), "form"),
    ("NetworkPolicy", lambda d: d["spec"].update(policyTypes="Ingress"), "'Ingress' is not of type"),
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
