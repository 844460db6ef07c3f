"""Render what is derived from the app's configuration, or check that it has not drifted.

1. The `deployments:` block of every Serve profile in `cluster/`: what `serve build` makes of
   the profile's `args` (the app built by `deployments.app:build_app`, each deployment dumped
   with Ray's own `deployment_to_schema`). The `args` stay the one source of truth; the block
   shows every deployment's replicas, autoscaling, queue limits and resources in one place.
   Before it, the application's `autoscaling_policy` when the args turn on the Validator's
   cascade autoscaling (an application option: `deployments.app.application_autoscaling_policy`).
2. `k8s/examples/rayservice.yaml`: the Helm chart rendered with its default values, for users
   without Helm (needs `helm-python-sdk`, x86_64 wheels).

    python scripts/render_configs.py            # rewrite both
    python scripts/render_configs.py --check    # exit 1 and name the drift instead

`ray serve build` itself only takes an import path of a ready `Application`; our app is
built from arguments, so this does what the command does (`build_app` then
`deployment_to_schema` per deployment) with the profile's `args`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "k8s" / "helm" / "inference-optimizer"
EXAMPLE = REPO / "k8s" / "examples" / "rayservice.yaml"
RELEASE = "infopt"
# Every deployment the app can build (deployments/app.py): the names `serve.deployments` may override.
DEPLOYMENT_NAMES = ("Ingress", "Scout", "Validator", "SemanticCache", "Embedder")
MARKER = "    # Generated from `args` by scripts/render_configs.py"
HEADER = MARKER + """ (what `serve build` makes of them, and the
    # application's autoscaling policy when `load.autoscaling.enabled`): do not edit;
    # change `args` and re-run it (a unit test fails on drift). Ray Serve applies these options over
    # the code's, so INFOPT_* environment overrides of replicas/resources do not apply to this file.
"""

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def serve_build(args: dict[str, Any]) -> list[dict[str, Any]]:
    """The deployments `serve build` would write for the app built from `args` (JSON-ready dicts).

    Two things are held still so that this runs in seconds without models or a cluster:
    model paths are not resolved (they are constructor arguments, not deployment options),
    and `ray.serve.llm` is handed the empty driver runtime_env that a config-file deploy has
    instead of starting a throwaway local Ray just to read it.
    """
    import ray
    from ray.serve._private.build_app import build_app as build_serve_app
    from ray.serve.deployment import deployment_to_schema

    from deployments.app import build_app
    from serving.config import AppConfig

    class _Context:
        runtime_env: dict[str, Any] = {}  # noqa: RUF012 (read-only stand-in)

    with mock.patch.object(AppConfig, "resolve_model", lambda self, model: model), \
            mock.patch.object(ray, "get_runtime_context", lambda: _Context()):
        app = build_app(args)
    built = build_serve_app(app, name="infopt")
    deployments = [deployment_to_schema(d).model_dump(mode="json", exclude_unset=True) for d in built.deployments]
    for d in deployments:
        # ray.serve.llm merges bundle keys through a set: order them so the output is stable.
        if d.get("placement_group_bundles"):
            d["placement_group_bundles"] = [dict(sorted(b.items())) for b in d["placement_group_bundles"]]
    return deployments


class _Dumper(yaml.SafeDumper):
    """Indents list items under their key, as the hand-written parts of the profiles do."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def autoscaling_policy(args: dict[str, Any]) -> dict[str, Any] | None:
    """The application-level `autoscaling_policy` the app's `args` ask for (None: none)."""
    from deployments.app import app_config, application_autoscaling_policy

    return application_autoscaling_policy(app_config(args))


def deployments_yaml(deployments: list[dict[str, Any]], policy: dict[str, Any] | None = None) -> str:
    block: dict[str, Any] = {"autoscaling_policy": policy} if policy else {}
    block["deployments"] = deployments
    text = yaml.dump(block, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=110)
    return "".join("    " + line if line.strip() else line for line in text.splitlines(True))


def is_serve_profile(path: Path) -> bool:
    doc = yaml.safe_load(path.read_text()) or {}
    return isinstance(doc, dict) and "applications" in doc


def render_profile(path: Path) -> str:
    """The profile's text with its generated `deployments:` block (appended after `args` if absent)."""
    text = path.read_text()
    doc = yaml.safe_load(text)
    apps = doc.get("applications") or []
    if len(apps) != 1:
        raise ValueError(f"{path}: expected exactly one application")
    head = text.split(MARKER, 1)[0].rstrip("\n") + "\n"
    if MARKER not in text and "deployments" in apps[0]:
        raise ValueError(f"{path}: has a hand-written `deployments:` block; remove it, it is generated")
    args = apps[0]["args"]
    return head + HEADER + deployments_yaml(serve_build(args), autoscaling_policy(args))


def _obj(properties: dict[str, Any], description: str | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties, **extra}
    if description:
        schema["description"] = description
    return schema


def _map(values: dict[str, Any]) -> dict[str, Any]:
    """A free-keyed map (labels, node selectors, resource quantities) whose values are typed."""
    return {"type": "object", "additionalProperties": values}


STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer", "minimum": 0}
QUANTITY: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "number"}]}
RESOURCES = _obj({"requests": _map(QUANTITY), "limits": _map(QUANTITY)})
TOLERATIONS = {"type": "array", "items": _obj({
    "key": STR, "operator": {"enum": ["Exists", "Equal"]}, "value": STR,
    "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute", ""]}, "tolerationSeconds": {"type": "integer"}})}
# Kubernetes' own affinity objects, closed at their first level (what the API server would prune).
AFFINITY = _obj({
    "nodeAffinity": _obj({"requiredDuringSchedulingIgnoredDuringExecution": {"type": "object"},
                          "preferredDuringSchedulingIgnoredDuringExecution": {"type": "array"}}),
    **{kind: _obj({"requiredDuringSchedulingIgnoredDuringExecution": {"type": "array"},
                   "preferredDuringSchedulingIgnoredDuringExecution": {"type": "array"}})
       for kind in ("podAffinity", "podAntiAffinity")},
})
PLACEMENT = {"nodeSelector": _map(STR), "tolerations": TOLERATIONS, "affinity": AFFINITY}
BOOL: dict[str, Any] = {"type": "boolean"}
STRINGS: dict[str, Any] = {"type": "array", "items": STR}
SECCOMP = _obj({"type": {"enum": ["RuntimeDefault", "Localhost", "Unconfined"]}, "localhostProfile": STR},
               required=["type"])
APPARMOR = _obj({"type": {"enum": ["RuntimeDefault", "Localhost", "Unconfined"]}, "localhostProfile": STR},
                required=["type"])
SELINUX = _obj({"level": STR, "role": STR, "type": STR, "user": STR})
# Kubernetes' PodSecurityContext and SecurityContext (Linux fields), closed.
POD_SECURITY = _obj({
    "runAsNonRoot": BOOL, "runAsUser": INT, "runAsGroup": INT, "fsGroup": INT,
    "fsGroupChangePolicy": {"enum": ["Always", "OnRootMismatch"]},
    "supplementalGroups": {"type": "array", "items": INT}, "seccompProfile": SECCOMP, "appArmorProfile": APPARMOR,
    "seLinuxOptions": SELINUX, "sysctls": {"type": "array", "items": _obj({"name": STR, "value": STR},
                                                                        required=["name", "value"])},
})
CONTAINER_SECURITY = _obj({
    "allowPrivilegeEscalation": BOOL, "readOnlyRootFilesystem": BOOL, "runAsNonRoot": BOOL, "runAsUser": INT,
    "runAsGroup": INT, "privileged": BOOL, "capabilities": _obj({"add": STRINGS, "drop": STRINGS}),
    "seccompProfile": SECCOMP, "appArmorProfile": APPARMOR, "seLinuxOptions": SELINUX,
    "procMount": {"enum": ["Default", "Unmasked"]},
})
# NetworkPolicy peers (networking.k8s.io/v1 NetworkPolicyPeer), closed.
LABEL_SELECTOR = _obj({"matchLabels": _map(STR), "matchExpressions": {"type": "array", "items": _obj({
    "key": STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]}, "values": STRINGS},
    required=["key", "operator"])}})
PEERS = {"type": "array", "items": _obj({
    "podSelector": LABEL_SELECTOR, "namespaceSelector": LABEL_SELECTOR,
    "ipBlock": _obj({"cidr": STR, "except": STRINGS}, required=["cidr"])})}
# A key of a Kubernetes Secret holding one API key (never the key itself).
SECRET_KEY_REF = _obj({"secretKey": {"type": "string", "minLength": 1}, "secretName": STR}, required=["secretKey"])
MAX_UNAVAILABLE = {"anyOf": [INT, {"type": "string", "pattern": r"^\d+%$"}]}


def _worker_group(gpus: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "enabled": {"type": "boolean"}, "groupName": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "replicas": INT, "minReplicas": INT, "maxReplicas": INT, "rayStartParams": _map(STR),
        "resources": RESOURCES, "shmSize": STR, **PLACEMENT,
    }
    if gpus:
        props["gpusPerPod"] = {"type": "integer", "minimum": 1}
    return _obj(props, required=list(props))


def _closed(node: Any, *, field_map: bool = False) -> Any:
    """A copy of a pydantic JSON schema with every model closed (additionalProperties: false), without
    titles or defaults, and without the free-dict alternative Ray offers beside each nested model."""
    if isinstance(node, list):
        return [_closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    if field_map:  # a `properties` map: its keys are field names, not schema keywords
        return {k: _closed(v) for k, v in node.items()}
    out = {k: _closed(v, field_map=k in ("properties", "$defs")) for k, v in node.items()
           if k not in ("title", "default")}
    if "anyOf" in out and any("$ref" in alt for alt in out["anyOf"]):
        out["anyOf"] = [alt for alt in out["anyOf"]
                        if not (alt.get("type") == "object" and "properties" not in alt and "$ref" not in alt)]
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def serve_deployment_options() -> tuple[dict[str, Any], dict[str, Any]]:
    """Serve's own deployment options (Ray's `DeploymentSchema`), every nested model closed, and their
    definitions (prefixed `ray_`): a misspelt key under `serve.deployments` fails `helm install`
    instead of being dropped by Ray (its models ignore unknown keys)."""
    from ray.serve.schema import DeploymentSchema

    schema = DeploymentSchema.model_json_schema(ref_template="#/$defs/ray_{model}")
    defs = {f"ray_{name}": d for name, d in schema.pop("$defs", {}).items()}
    options = _closed(schema)
    options.pop("description", None)
    options["properties"]["name"] = {"enum": list(DEPLOYMENT_NAMES)}
    options["required"] = ["name"]
    return options, _closed(defs, field_map=True)


def values_schema() -> dict[str, Any]:
    """values.schema.json: every level closed (additionalProperties: false); `serve.args` is the app's own
    AppConfig JSON schema, so `helm install` rejects a misspelt or out-of-range setting before anything runs."""
    from serving.config import AppConfig

    app = AppConfig.model_json_schema()
    defs = app.pop("$defs", {})
    app.pop("title", None)
    # A tenant's keys may come from `apiKeys.tenants` (Secrets) instead: the chart adds them to
    # `serve.args.auth.tenants.<name>.keys` and fails the render of a tenant left without any.
    tenant = defs["TenantConfig"]
    tenant["required"] = [name for name in tenant.get("required", []) if name != "keys"]
    if not tenant["required"]:
        del tenant["required"]
    tenant["properties"]["keys"].pop("minItems", None)
    tenant["properties"]["keys"]["description"] += " In the chart, `apiKeys.tenants` adds keys from a Secret."
    options, ray_defs = serve_deployment_options()
    assert not set(ray_defs) & set(defs), "definition names clash"
    defs.update(ray_defs)
    deployments = {"type": "array", "items": options}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "inference-optimizer chart values (generated by scripts/render_configs.py)",
        **_obj({
            "nameOverride": STR,
            "fullnameOverride": {"type": "string", "maxLength": 40},
            "image": _obj({"repository": STR, "tag": STR, "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}},
                          required=["repository"]),
            "imagePullSecrets": {"type": "array", "items": _obj({"name": STR}, required=["name"])},
            "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
            "ray": _obj({
                "auth": _obj({"enabled": BOOL, "tokenSecretName": STR}),
                "podSecurityContext": POD_SECURITY,
                "containerSecurityContext": CONTAINER_SECURITY,
                "writableDirs": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^/"},
                                 "propertyNames": {"pattern": "^[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?$"}},
            }),
            "model": _obj({
                "source": {"enum": ["hub", "pvc"]},
                "hub": _obj({"tokenSecretName": STR, "tokenSecretKey": STR}),
                "pvc": _obj({"claimName": STR, "mountPath": {"type": "string", "pattern": "^/"}}),
            }, required=["source"]),
            "serve": _obj({
                "proxyLocation": {"enum": ["EveryNode", "HeadOnly", "Disabled"]},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "args": app,
                "deployments": deployments,
            }, required=["args"]),
            "rayService": _obj({"serviceUnhealthySecondThreshold": INT, "deploymentUnhealthySecondThreshold": INT}),
            "autoscaling": _obj({
                "enabled": {"type": "boolean"}, "upscalingMode": {"enum": ["Default", "Conservative", "Aggressive"]},
                "idleTimeoutSeconds": INT, "resources": RESOURCES}),
            "head": _obj({"rayStartParams": _map(STR), "resources": RESOURCES, "shmSize": STR, **PLACEMENT}),
            "cpuWorkers": _worker_group(gpus=False),
            "gpuWorkers": _worker_group(gpus=True),
            "qdrant": _obj({
                "enabled": {"type": "boolean"},
                "image": _obj({"repository": STR, "tag": STR,
                               "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}),
                "httpPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                "persistence": _obj({"size": STR, "storageClassName": STR}),
                "apiKeySecretName": STR, "apiKeySecretKey": STR, "resources": RESOURCES,
                "podSecurityContext": POD_SECURITY, "containerSecurityContext": CONTAINER_SECURITY,
                "nodeSelector": _map(STR), "tolerations": TOLERATIONS}),
            "ingress": _obj({
                "enabled": {"type": "boolean"}, "className": STR, "annotations": _map(STR),
                "hosts": {"type": "array", "items": _obj({"host": STR, "paths": {"type": "array", "items": _obj({
                    "path": STR, "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]}},
                    required=["path", "pathType"])}}, required=["paths"])},
                "tls": {"type": "array", "items": _obj({"secretName": STR, "hosts": {"type": "array", "items": STR}})},
            }),
            "metrics": _obj({
                "serviceMonitor": _obj({
                    "enabled": {"type": "boolean"}, "labels": _map(STR), "interval": STR, "scrapeTimeout": STR}),
                "grafanaDashboard": _obj({
                    "enabled": {"type": "boolean"}, "label": {"type": "string", "minLength": 1},
                    "labelValue": STR, "namespace": STR, "annotations": _map(STR)}),
            }),
            "apiKeys": _obj({
                "secretName": STR,
                "tenants": {"type": "object", "propertyNames": {"minLength": 1},
                            "additionalProperties": {"anyOf": [SECRET_KEY_REF, {
                                "type": "array", "items": SECRET_KEY_REF, "minItems": 1}]}},
                "admin": {"type": "array", "items": SECRET_KEY_REF},
            }),
            "networkPolicy": _obj({"enabled": BOOL, "ingressFrom": PEERS, "kuberayOperatorFrom": PEERS,
                                   "dashboardFrom": PEERS, "metricsFrom": PEERS}),
            "podDisruptionBudget": _obj({"enabled": BOOL, "qdrant": _obj({"maxUnavailable": MAX_UNAVAILABLE}),
                                         "workers": _obj({"maxUnavailable": MAX_UNAVAILABLE})}),
            "gcsFaultTolerance": _obj({"enabled": BOOL, "redisAddress": STR, "redisPasswordSecretName": STR,
                                       "redisPasswordSecretKey": STR, "externalStorageNamespace": STR}),
        }),
        "$defs": defs,
    }


def render_values_schema() -> str:
    import json

    return json.dumps(values_schema(), indent=2) + "\n"


def render_chart(values: dict[str, Any] | None = None) -> str:
    """The chart rendered offline with its defaults (plus `values`), as one multi-document YAML."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace="default", is_install=True)
    docs = []
    for name in sorted(manifests):
        body = manifests[name].strip()
        if name.endswith(".yaml") and body and not name.endswith("NOTES.txt"):
            docs.append(body if body.startswith("---") else f"---\n{body}")
    header = (f"# Rendered from k8s/helm/inference-optimizer with its default values (release '{RELEASE}', "
              "namespace 'default')\n# by scripts/render_configs.py, for `kubectl apply -f` without Helm. "
              "Do not edit: change the chart and re-run.\n")
    return header + "\n".join(docs) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    parser.add_argument("--no-chart", action="store_true", help="skip the Helm example (no helm-python-sdk)")
    opts = parser.parse_args(argv)
    targets: list[tuple[Path, Any]] = [
        (p, lambda p=p: render_profile(p)) for p in sorted((REPO / "cluster").glob("*.yaml")) if is_serve_profile(p)
    ]
    targets.append((CHART / "values.schema.json", render_values_schema))
    if not opts.no_chart:
        targets.append((EXAMPLE, render_chart))
    drift = []
    for path, render in targets:
        text = render()
        if path.exists() and path.read_text() == text:
            continue
        if opts.check:
            drift.append(str(path.relative_to(REPO)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if drift:
        print("out of date (run `python scripts/render_configs.py`): " + ", ".join(drift), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
