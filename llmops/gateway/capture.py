"""The gateway's traffic capture: the data contract lives in `llmops.traffic` (schema, writer, reader),
which the gateway writes and drift reads; this module keeps the gateway's names for it."""

from llmops.traffic import FIELDS as SCHEMA_FIELDS
from llmops.traffic import CaptureConfig, read, read_table
from llmops.traffic import TrafficWriter as CaptureWriter

__all__ = ["CaptureConfig", "CaptureWriter", "SCHEMA_FIELDS", "read", "read_table"]
