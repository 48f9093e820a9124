"""The traffic dataset: what the gateway captures and drift reads, as one data contract.

- `schema`: the columns, the Arrow schema and the partition layout;
- `writer`: `TrafficWriter` (and the gateway's `CaptureConfig`), batched off the request path;
- `reader`: `read` / `read_table` over every gateway's files, local or in object storage;
- `location`: a folder or a filesystem URI (`s3://bucket/prefix`) opened through pyarrow or fsspec.
"""

from llmops.traffic.reader import read, read_table
from llmops.traffic.schema import FIELDS, arrow_schema
from llmops.traffic.writer import CaptureConfig, TrafficWriter

__all__ = ["CaptureConfig", "TrafficWriter", "FIELDS", "arrow_schema", "read", "read_table"]
