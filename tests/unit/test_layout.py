"""The shape of the code: a curated facade, a core that needs no Ray, offline tools kept out of it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import serving

ROOT = Path(__file__).resolve().parents[2]


def test_every_facade_name_resolves_to_what_its_module_defines():
    import importlib

    for name in serving.__all__:
        obj = getattr(serving, name)
        assert getattr(importlib.import_module(serving._EXPORTS[name]), name) is obj
    assert sorted(dir(serving)) == serving.__all__ == sorted(serving._EXPORTS)


def test_the_request_path_imports_no_ray_torch_or_vllm():
    """The core is importable without Ray: the pipeline, the service and the policies pull no heavy module."""
    code = ("import sys, serving.pipeline, serving.service, serving.policy.cache, serving.policy.escalation, "
            "serving.compose; print(sorted(m for m in ('ray', 'torch', 'vllm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_never_imports_the_deployments_or_the_offline_tools():
    outside = ("deployments", "infopt")
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] in outside)
                 for p in (ROOT / "serving").rglob("*.py")}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_the_pipelines_internals_are_private_modules():
    modules = [p.stem for p in (ROOT / "serving" / "pipeline").glob("*.py") if p.stem != "__init__"]
    assert modules and all(m.startswith("_") for m in modules)
