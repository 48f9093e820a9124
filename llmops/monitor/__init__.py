"""Continuous training: retraining triggers (new data, quality, drift, schedule) that fine-tune,
evaluate and promote through the gate, each decision logged to MLflow with its reason."""

from llmops.monitor.config import MonitorConfig
from llmops.monitor.run import Decision, run_monitor_once

__all__ = ["Decision", "MonitorConfig", "run_monitor_once"]
