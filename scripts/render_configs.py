"""Render what is derived from the app's configuration, or check that it has not drifted.

1. The `deployments:` block of every Serve profile in `cluster/`: what `serve build` makes of
   the profile's `args` (the app built by `deployments.app:build_app`, each deployment dumped
   with Ray's own `deployment_to_schema`). The `args` stay the one source of truth; the block
   shows every deployment's replicas, autoscaling, queue limits and resources in one place.
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
MARKER = "    # Generated from `args` by scripts/render_configs.py"
HEADER = MARKER + """ (what `serve build` makes of them): do not edit;
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


def deployments_yaml(deployments: list[dict[str, Any]]) -> str:
    text = yaml.dump({"deployments": deployments}, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
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
    return head + HEADER + deployments_yaml(serve_build(apps[0]["args"]))


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
