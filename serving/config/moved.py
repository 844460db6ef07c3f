"""Keys that moved in the configuration tree: a profile still using one fails with where it went.

Without this, pydantic's `extra="forbid"` would only say "Extra inputs are not permitted".
"""

from __future__ import annotations

from typing import Any

# The light deployments' Ray Serve options, now one nested `deployment:` block (serving/config/deployment.py).
DEPLOYMENT_KEYS = ("num_cpus", "num_replicas", "autoscaling", "max_ongoing_requests", "max_queued_requests",
                   "resources")


def to_deployment(section: str, keys: tuple[str, ...] = DEPLOYMENT_KEYS) -> dict[str, str]:
    """`{key: "moved to <section>.deployment.<key>"}` for a section whose deployment options moved."""
    return {key: f"moved to {section}.deployment.{key}" for key in keys}


def reject_moved(data: Any, section: str, moved: dict[str, str]) -> Any:
    """The body of a `mode="before"` validator: `data` unchanged, or a ValueError naming each moved key."""
    if isinstance(data, dict):
        found = [key for key in moved if key in data]
        if found:
            raise ValueError("; ".join(f"{section}.{key} {moved[key]}" for key in found))
    return data
