"""Configuration of the quality guarantee: the calibration a profile uses, the risk it allows, the live audit."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class AuditConfig(BaseModel):
    """The closed-loop audit: a share of shortcut answers is answered again by the Validator and judged."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Audit shortcut answers (Scout answers kept, cache hits) off the "
                          "request's path.")
    share: float = Field(0.05, ge=0, le=1, description="Share of shortcut answers audited.")
    max_validator_share: float = Field(
        0.1, gt=0, le=1, description="Audits use at most this share of one Validator's time (a budget refilled "
        "over wall time); an audit over budget is dropped, never queued.")
    max_in_flight: int = Field(2, ge=1, description="Most audits running at once.")
    priority: int = Field(1000, description="vLLM priority of audit calls (higher is served later): the lowest.")
    state_path: Path | None = Field(None, description="JSON file keeping the running disagreement estimates "
                                    "across restarts (None: <cache_dir>/audit/<profile>.json).")
    export_path: Path | None = Field(None, description="JSONL file of audited and escalated pairs (prompt, "
                                     "Validator answer, shortcut answer, verdict): a distillation set (None: off).")
    cooldown: int = Field(5, ge=1, description="Audits between two changes of a threshold by the feedback.")
    tighten_step: float = Field(0.05, gt=0, le=1, description="How much one tightening raises the Scout's bound.")


class QualityConfig(BaseModel):
    """Every shortcut under a measured guarantee: disagreement with the Validator at most ε with confidence 1 - δ."""

    model_config = ConfigDict(extra="forbid")

    calibration: Path | None = Field(
        None, description="Calibration file (`infopt calibrate`) for this profile's models; relative paths are "
        "read from the repository's cluster/ folder. None: uncalibrated (the Scout's raw confidence and "
        "tiering.threshold decide).")
    max_disagreement: float = Field(0.01, gt=0, lt=1, description="ε: the largest disagreement rate with the "
                                    "Validator allowed among answers a shortcut serves.")
    delta: float = Field(0.05, gt=0, lt=1, description="δ: the guarantee holds with confidence 1 - δ.")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="The closed-loop audit.")
