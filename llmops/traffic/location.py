"""Where a traffic dataset lives: a local folder, or any filesystem URI pyarrow (or fsspec) can open.

`capture.path: traffic` is a folder (relative to the config file); `capture.path: s3://bucket/prefix`
puts every gateway of a fleet into one dataset in object storage. pyarrow opens `s3://`, `gs://`,
`hdfs://`, `abfs://` and `file://` itself, with the usual credentials (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for an S3-compatible server, or
`?endpoint_override=HOST:PORT&scheme=http` in the URI); any other scheme goes through fsspec when the
matching fsspec package is installed. Credentials in the URI itself work but never show in messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BeforeValidator, ValidationInfo

from llmops.errors import ConfigError

__all__ = ["DatasetLocation", "DatasetRoot", "is_uri", "open_root", "redact"]

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(value: Union[str, Path]) -> bool:
    """True for `scheme://...` (a filesystem URI), False for a plain path."""
    return isinstance(value, str) and bool(_URI.match(value))


def redact(location: Union[str, Path]) -> str:
    """`location` without credentials (`s3://KEY:SECRET@bucket` -> `s3://***@bucket`) and query string."""
    text = str(location)
    if not is_uri(text):
        return text
    scheme, _, rest = text.partition("://")
    rest = rest.split("?", 1)[0]
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}://{rest}"


def _location(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str) and is_uri(value):
        return value
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return path
    return value


DatasetLocation = Annotated[Union[Path, str], BeforeValidator(_location)]
"""A config field naming a dataset: a folder (relative to the config file) or a filesystem URI."""


@dataclass(frozen=True)
class DatasetRoot:
    """An opened dataset location: a `pyarrow.fs.FileSystem` and the root path inside it."""

    filesystem: Any
    path: str
    display: str
    """The location for messages (credentials removed)."""
    local: bool
    """True on the local filesystem (files can be fsynced and renamed atomically)."""

    def join(self, *parts: str) -> str:
        """The path of `parts` under the root, in the filesystem's own syntax."""
        return "/".join([self.path.rstrip("/"), *parts]) if self.path else "/".join(parts)


def open_root(location: Union[str, Path]) -> DatasetRoot:
    """Open a dataset location (nothing is created).

    Raises:
        ConfigError: the URI's scheme is unknown to pyarrow and fsspec, or its filesystem cannot be set up
            (the message names the location, without credentials).
    """
    from pyarrow import fs

    if not is_uri(location):
        return DatasetRoot(fs.LocalFileSystem(), str(Path(location).expanduser().absolute()), str(location), True)
    display = redact(location)
    try:
        filesystem, path = fs.FileSystem.from_uri(str(location))
    except (ValueError, NotImplementedError, OSError) as pyarrow_error:
        filesystem, path = _fsspec(str(location), display, pyarrow_error)
    local = isinstance(filesystem, fs.LocalFileSystem)
    return DatasetRoot(filesystem, path.rstrip("/"), display, local)


def _fsspec(location: str, display: str, pyarrow_error: Exception) -> tuple[Any, str]:
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        filesystem, path = fsspec.core.url_to_fs(location)
    except ImportError as error:
        raise ConfigError(f"capture.path: {display}: pyarrow cannot open it ({pyarrow_error}) and the fsspec "
                          f"filesystem for it is not installed ({error})") from None
    except Exception as error:
        raise ConfigError(f"capture.path: cannot open {display}: {error}") from None
    return PyFileSystem(FSSpecHandler(filesystem)), path
