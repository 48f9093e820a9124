"""`serving/monitor.yaml`: what to watch and what to do when a trigger fires."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator, model_validator

from llmops.config import ConfigModel, ConfigPath
from llmops.traffic.location import DatasetLocation

__all__ = ["MonitorConfig", "NewDataTrigger", "QualityTrigger", "DriftTrigger", "ScheduleTrigger"]


class NewDataTrigger(ConfigModel):
    """Fire when the training data has grown by at least `min_new_rows` since the last fine-tune."""

    path: ConfigPath
    """The JSONL training file the fine-tune reads."""
    min_new_rows: int = Field(100, ge=1)


class QualityTrigger(ConfigModel):
    """Fire when the served version's mean on a suite's scorer falls below `min`."""

    suite: ConfigPath
    """An eval suite (recent traffic or feedback turned into items)."""
    scorer: str
    min: float


class DriftTrigger(ConfigModel):
    """Fire when captured traffic of the served version drifts from the reference data."""

    reference: ConfigPath
    """JSONL reference rows (the training data, usually)."""
    capture_dir: DatasetLocation = Path("traffic")
    """The gateway's `capture.path`: a folder (relative to this file) or a URI such as `s3://bucket/prefix`."""
    since: str = "24h"
    prompt: Optional[str] = None
    """Registry prompt that renders reference rows the way the gateway did."""
    js_max: float = Field(0.1, gt=0, le=1)
    """Token Jensen-Shannon divergence (bits) at or above which drift is declared without a test."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Drift when the permutation p-value is below this."""
    min_requests: int = Field(20, ge=1)
    """Fewer captured requests than this: too little traffic to judge, the trigger does not fire."""


class ScheduleTrigger(ConfigModel):
    """Fire when a cron time has passed since the last fine-tune (`minute hour day month weekday`)."""

    cron: str

    @field_validator("cron")
    @classmethod
    def _valid(cls, value: str) -> str:
        from llmops.monitor.cron import parse_cron

        parse_cron(value)
        return value


class Triggers(ConfigModel):
    new_data: Optional[NewDataTrigger] = None
    quality: Optional[QualityTrigger] = None
    drift: Optional[DriftTrigger] = None
    schedule: Optional[ScheduleTrigger] = None


class MonitorConfig(ConfigModel):
    """Continuous training for one registered model."""

    model: str
    """The registered model name."""
    alias: str = "production"
    """The alias whose version is watched, and the one a new version is promoted to."""
    finetune: ConfigPath
    """The fine-tune config run when a trigger fires."""
    suite: ConfigPath
    """The suite (with a `gate:`) that decides the promotion."""
    triggers: Triggers
    interval: float = Field(3600, gt=0)
    """Seconds between checks when not run with --once."""
    state: Path = Path(".llmops/monitor-state.json")
    """Where the monitor remembers the last fine-tune (time, data rows); relative to the working
    directory, beside the store."""

    @model_validator(mode="after")
    def _some_trigger(self) -> "MonitorConfig":
        if not any(getattr(self.triggers, name) for name in Triggers.model_fields):
            raise ValueError("triggers: configure at least one of new_data, quality, drift, schedule")
        return self
