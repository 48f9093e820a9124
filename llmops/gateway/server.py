"""Serving an app on a background thread: for the quickstart, tests and embedding the gateway in a process."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """Runs an ASGI app under uvicorn on a daemon thread; a context manager that starts and stops it.

    With `port=0` the operating system picks a free port (no race with other processes); `url` tells
    which. Stopping lets uvicorn run the app's shutdown (engines, trace and capture flushes).

        with BackgroundServer(create_app(config)) as server:
            OpenAI(base_url=server.url + "/v1", api_key="unused")...
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout: float = 120.0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
        self.host = host
        self.start_timeout = start_timeout
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        """The port actually bound."""
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """`http://HOST:PORT` of the running server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> "BackgroundServer":
        """Start serving and wait until the socket is bound (RuntimeError if it never is)."""
        self._thread = threading.Thread(target=self.server.run, name="llmops-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to exit and wait for the app's shutdown to finish."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
