"""Write docs/configuration.md, the configuration reference, from the pydantic model tree.

The reference is generated, never written by hand: every key of `serving.config.AppConfig`
(nested models, `Model | None`, models inside dicts and lists) gets a row with its type and
constraints, its default and its `description=`; every model gets a section opened by its
docstring. The code stays the one source of truth, and `tests/unit/test_docs.py` fails when
the committed file differs from what this script writes.

    python scripts/config_reference.py           # rewrite docs/configuration.md (`make docs`)
    python scripts/config_reference.py --check   # exit 1 when the committed file is stale

A model used at several places (an engine's options under `scout` and `validator`, the
autoscaling range of every deployment) is described once, under a placeholder such as
`<engine>` that the section resolves. The output is deterministic: no dates, and defaults
that depend on the machine (`MACHINE_DEFAULTS`) are described instead of evaluated.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "configuration.md"

if str(REPO) not in sys.path:
    # Run as `python scripts/config_reference.py`: sys.path[0] is scripts/, not the checkout.
    sys.path.insert(0, str(REPO))

# Defaults computed from the environment at run time: evaluating them would write this machine's
# paths into a committed file, so they are described. Keyed by key path.
MACHINE_DEFAULTS = {
    "cache_dir": "`$XDG_CACHE_HOME/inference-optimizer`, else `~/.cache/inference-optimizer`",
}

# Suffixes dropped from a class name to name its placeholder (`EngineConfig` -> `<engine>`).
_CLASS_SUFFIXES = ("Config", "Options", "Settings")

_CONSTRAINTS: dict[type, tuple[str, str]] = {
    annotated_types.Gt: ("gt", "> {}"),
    annotated_types.Ge: ("ge", ">= {}"),
    annotated_types.Lt: ("lt", "< {}"),
    annotated_types.Le: ("le", "<= {}"),
    annotated_types.MinLen: ("min_length", "length >= {}"),
    annotated_types.MaxLen: ("max_length", "length <= {}"),
    annotated_types.MultipleOf: ("multiple_of", "multiple of {}"),
}


def _root() -> type[BaseModel]:
    from serving.config import AppConfig

    return AppConfig


# -- the tree ------------------------------------------------------------------------------------


def models_in(annotation: Any) -> list[tuple[type[BaseModel], str]]:
    """The models inside a field's type, each with the key suffix that reaches it from the field.

    '' for the model itself or an optional one, '.<key>' for a dict's values, '[]' for list items.
    """
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return models_in(args[0])
    if origin in (typing.Union, types.UnionType):
        return [found for arg in args for found in models_in(arg)]
    if isinstance(origin, type) and issubclass(origin, Mapping) and len(args) == 2:
        return [(model, ".<key>" + suffix) for model, suffix in models_in(args[1])]
    if isinstance(origin, type) and issubclass(origin, (list, tuple, set, frozenset)):
        return [(model, "[]" + suffix) for arg in args if arg is not Ellipsis for model, suffix in models_in(arg)]
    return []


class Tree:
    """Every model reachable from a root, in the order a reader meets them, and where each is used."""

    def __init__(self, root: type[BaseModel]) -> None:
        self.root = root
        self.order: list[type[BaseModel]] = [root]
        # model -> (parent model, key segment) pairs, one per field that holds it.
        self.parents: dict[type[BaseModel], list[tuple[type[BaseModel], str]]] = {}
        self._visit(root)
        self.paths = cache(self._paths)
        names = [self.heading(model) for model in self.order]
        if len(set(names)) != len(names):
            raise SystemExit(f"two sections would share a heading: {sorted(names)}")

    def _visit(self, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            for sub, suffix in models_in(field.annotation):
                self.parents.setdefault(sub, []).append((model, name + suffix))
                if sub not in self.order:
                    self.order.append(sub)
                    self._visit(sub)

    def _paths(self, model: type[BaseModel]) -> tuple[str, ...]:
        """Key paths of a model, written from its parents' bases (a parent used twice shows its placeholder)."""
        if model is self.root:
            return ("",)
        out: list[str] = []
        for parent, segment in self.parents[model]:
            base = self.base(parent)
            path = f"{base}.{segment}" if base else segment
            if path not in out:
                out.append(path)
        return tuple(out)

    def base(self, model: type[BaseModel]) -> str:
        """The prefix of this model's keys: its one path, or its placeholder when it is used at several."""
        paths = self.paths(model)
        return paths[0] if len(paths) == 1 else placeholder(model)

    def key(self, model: type[BaseModel], field: str) -> str:
        base = self.base(model)
        return f"{base}.{field}" if base else field

    def heading(self, model: type[BaseModel]) -> str:
        if model is self.root:
            return f"Top level: {model.__name__}"
        return f"`{self.base(model)}`: {model.__name__}"

    def anchor(self, model: type[BaseModel]) -> str:
        return slug(self.heading(model))

    def fields(self) -> list[tuple[type[BaseModel], str, FieldInfo]]:
        """Every (model, field name, field) of the tree, in reading order."""
        return [(model, name, field) for model in self.order for name, field in model.model_fields.items()]


def placeholder(model: type[BaseModel]) -> str:
    name = model.__name__
    for suffix in _CLASS_SUFFIXES:
        if name.endswith(suffix) and name != suffix:
            name = name[: -len(suffix)]
            break
    return "<" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() + ">"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def undocumented(root: type[BaseModel] | None = None) -> list[str]:
    """Fields of the tree without a description, as `Model.field (key path)`."""
    tree = Tree(root or _root())
    return [f"{model.__name__}.{name} ({tree.key(model, name)})" for model, name, field in tree.fields()
            if not (field.description or "").strip()]


def models_without_docstring(root: type[BaseModel] | None = None) -> list[str]:
    """Models of the tree whose class has no docstring of its own (the section would have no text)."""
    return [model.__name__ for model in Tree(root or _root()).order if not _docstring(model)]


# -- rendering -----------------------------------------------------------------------------------


def _docstring(model: type[BaseModel]) -> str:
    # Only the class's own: pydantic models otherwise inherit BaseModel's docstring.
    doc = model.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if doc else ""


def _outside_code(text: str, fix: Callable[[str], str]) -> str:
    """Apply `fix` to the parts of `text` outside backtick code spans."""
    parts = text.split("`")
    return "`".join(fix(part) if i % 2 == 0 else part for i, part in enumerate(parts))


def _prose(text: str) -> str:
    # `<engine>` outside a code span would be read as an HTML tag and vanish.
    return _outside_code(text, lambda s: s.replace("<", "&lt;"))


def _cell(text: str) -> str:
    """Text for a table cell: one line, pipes escaped (GitHub needs `\\|` inside code spans too)."""
    return _prose(" ".join(text.split())).replace("|", "\\|")


def yaml_value(value: Any) -> str:
    """A default as it would be written in a profile's YAML (flow style)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = value.as_posix()
    if isinstance(value, str):
        plain = value and yaml.safe_load(value) == value and not re.search(r"[:{}\[\],#&*!|>'\"%@`]", value)
        return value if plain else json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{yaml_value(k)}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return "[" + ", ".join(yaml_value(v) for v in items) + "]"
    return json.dumps(str(value))


def _type_name(annotation: Any, tree: Tree) -> str:
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in tree.order:
            return annotation.__name__
        return f"[{annotation.__name__}](#{tree.anchor(annotation)})"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], tree)
    if origin is typing.Literal:
        return " \\| ".join(f"`{yaml_value(v)}`" for v in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg, tree) for arg in args)
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else _type_name(arg, tree) for arg in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _constraints(field: FieldInfo) -> list[str]:
    out = []
    for meta in field.metadata:
        known = _CONSTRAINTS.get(type(meta))
        if known:
            out.append(known[1].format(getattr(meta, known[0])))
        elif getattr(meta, "pattern", None):
            out.append(f"matches `{meta.pattern}`")
    return out


def _type_cell(field: FieldInfo, tree: Tree) -> str:
    # Plain type names read as code; links to sections and literal values are formatted already.
    parts = _type_name(field.annotation, tree).split(" \\| ")
    text = " \\| ".join(part if part.startswith(("[", "`")) else f"`{part}`" for part in parts)
    limits = _constraints(field)
    return text + (", " + ", ".join(limits) if limits else "")


def _model_default(value: BaseModel) -> str:
    """A nested model's default: the model's own defaults, or which of them this field changes."""
    changed = []
    for name, field in type(value).model_fields.items():
        own = getattr(value, name)
        if field.is_required() or own != field.get_default(call_default_factory=True, validated_data={}):
            changed.append(f"`{name}: {yaml_value(own)}`")
    if not changed:
        return "its defaults"
    return "its defaults, except " + ", ".join(changed)


def _default_cell(field: FieldInfo, key: str) -> str:
    if key in MACHINE_DEFAULTS:
        return MACHINE_DEFAULTS[key]
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    text = _model_default(value) if isinstance(value, BaseModel) else f"`{yaml_value(value)}`"
    home, repo = str(Path.home()), str(REPO)
    if (home != "/" and home in text) or repo in text:
        # A default read from this machine would make the file differ from machine to machine.
        raise SystemExit(f"{key}: the default {text} depends on this machine; describe it in MACHINE_DEFAULTS")
    return text.replace("|", "\\|")


def _source(model: type[BaseModel]) -> str:
    """The file defining a model, from its module name (the same wherever the package is installed)."""
    module = sys.modules.get(model.__module__)
    path = model.__module__.replace(".", "/")
    return path + ("/__init__.py" if hasattr(module, "__path__") else ".py")


def _env_line(root: type[BaseModel]) -> str:
    config = getattr(root, "model_config", {})
    prefix, delimiter = config.get("env_prefix", ""), config.get("env_nested_delimiter")
    if not prefix:
        return ""
    nested = f", with `{delimiter}` between levels" if delimiter else ""
    return (f"Environment variables override them: `{prefix}<KEY>`, the key path in capitals{nested} "
            f"(examples in {root.__name__}'s text below). ")


def render(root: type[BaseModel] | None = None) -> str:
    """The whole of docs/configuration.md."""
    tree = Tree(root or _root())
    root = tree.root
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/config_reference.py (`make docs`) from the pydantic models in serving/config/: "
        "do not edit. Change a field's description or a model's docstring, then re-run it; "
        "tests/unit/test_docs.py fails when this file is stale. -->",
        "",
        f"One pydantic model tree, `{root.__module__.rsplit('.', 1)[0]}.{root.__name__}`, validated once when the "
        "app is built; unknown keys are rejected at every level. A profile's `args` (the application in "
        "`cluster/<profile>.yaml`) give the values. " + _env_line(root) + "`infopt config --profile tiny` prints "
        "a profile's validated result. With `serve run cluster/<profile>.yaml` the profile's generated "
        "`deployments:` block wins over overrides of replicas, queues and resources "
        "([deployment.md](deployment.md#scale-out)).",
        "",
        "Defaults are written as in a profile's YAML (`null` is the `None` some descriptions name); a "
        "placeholder such as `<engine>` stands for each key path its section lists.",
        "",
    ]
    lines += [f"- [{tree.heading(model)}](#{tree.anchor(model)})" for model in tree.order]
    for model in tree.order:
        lines += ["", f"## {tree.heading(model)}", ""]
        paths = tree.paths(model)
        if len(paths) > 1:
            listed = ", ".join(f"`{p}`" for p in paths)
            lines += [f"`{tree.base(model)}` is any of {listed}.", ""]
        lines += [f"Defined in `{_source(model)}`.", ""]
        doc = _docstring(model)
        if doc:
            lines += [_prose(doc), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = tree.key(model, name)
            key_cell = key.replace("|", "\\|")
            lines.append(f"| `{key_cell}` | {_type_cell(field, tree)} | {_default_cell(field, key)} | "
                         f"{_cell(field.description or '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    ns = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text() if OUTPUT.exists() else ""
    if ns.check:
        if text == current:
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "committed", "generated", lineterm="")
        print("docs/configuration.md is stale: run make docs\n" + "\n".join(diff), file=sys.stderr)
        return 1
    if text != current:
        OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)} ({len(Tree(_root()).order)} sections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
