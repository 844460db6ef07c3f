"""Where prepared models live, and what vLLM loads for a model name (no preparation here: see `infopt.prepare`)."""

from __future__ import annotations

import json
from pathlib import Path

from serving.models.catalog import CATALOG

MARKER = ".infopt-prepared.json"
# Bump when the conversion changes so that old folders are rebuilt.
CONVERTER_VERSION = 1

class ModelPrepareError(RuntimeError):
    """A model could not be prepared (install, integrity or conversion failure)."""


def model_dir(name: str, cache_dir: Path) -> Path:
    """Folder a catalog model is (or will be) prepared into."""
    return Path(cache_dir) / "models" / name


def is_prepared(name: str, cache_dir: Path) -> bool:
    """True when `name` was prepared by this converter version and verified."""
    marker = model_dir(name, cache_dir) / MARKER
    if not marker.exists():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    entry = CATALOG[name]
    return info.get("converter") == CONVERTER_VERSION and info.get("sha256") == entry.sha256


def resolve(model: str, cache_dir: Path) -> str:
    """What vLLM should load: a prepared catalog folder, a local path, or a hub ID as given.

    A catalog name that has not been prepared is an error with the command that fixes it,
    rather than a hub download that cannot work here.
    """
    if model in CATALOG:
        if not is_prepared(model, cache_dir):
            raise ModelPrepareError(
                f"model '{model}' is not prepared in {cache_dir}: run `infopt models prepare --model {model}`"
            )
        return str(model_dir(model, cache_dir))
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve())
    return model
