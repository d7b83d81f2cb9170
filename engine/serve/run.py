"""Running the server: in the foreground for ``graphrun serve``, or on a background thread."""
from __future__ import annotations

import asyncio
import socket
import sys
import threading
from typing import Any, TextIO

from aiohttp import web

from ..node import Registry
from .app import create_app
from .config import ServerConfig

LOOPBACK = ("127.0.0.1", "::1", "localhost")


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    return runner, bound


def serve(config: ServerConfig, registry: Registry | None = None, *, stream: TextIO | None = None) -> None:
    """Serve until Ctrl-C. Prints the address (and a warning when listening beyond this machine)."""
    stream = stream or sys.stderr
    if config.host not in LOOPBACK:
        print(f"warning: listening on {config.host}: other machines can reach this server"
              + ("" if config.token else " and run prompts on it (no --token set)"), file=stream, flush=True)

    async def main() -> None:
        app = create_app(config, registry)
        runner, port = await _start(app, config.host, config.port)
        shown = f"[{config.host}]" if ":" in config.host else config.host
        print(f"graphrun serve: http://{shown}:{port} (ComfyUI API; Ctrl-C stops)", file=stream, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("graphrun serve: stopped", file=stream, flush=True)


class BackgroundServer:
    """A server on its own thread and event loop: ``with BackgroundServer(config) as srv: srv.url``.

    ``port=0`` in the config picks a free port; :attr:`url` has the one used.
    """

    def __init__(self, config: ServerConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry
        self.port = config.port
        self.app: web.Application | None = None
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="graphrun-serve", daemon=True)
        self._started = False

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def server(self) -> Any:
        """The :class:`~graphrun.engine.serve.app.Server` state (queue, runner, worker)."""
        assert self.app is not None
        from .app import SERVER_KEY

        return self.app[SERVER_KEY]

    def start(self) -> "BackgroundServer":
        self._thread.start()
        self.app = create_app(self.config, self.registry)
        future = asyncio.run_coroutine_threadsafe(_start(self.app, self.config.host, self.config.port), self._loop)
        self._runner, self.port = future.result(timeout=60)
        self._started = True
        return self

    def stop(self) -> None:
        if self._started and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=60)
            self._started = False
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
