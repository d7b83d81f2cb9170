"""``graphrun serve``: ComfyUI's HTTP/WebSocket API (and optionally its web editor) on graphrun's engine.

Start it with ``graphrun serve`` or, from Python, :func:`create_app` (an aiohttp application) or
:class:`BackgroundServer` (a server on a thread, for tests and notebooks). Needs ``graphrun[serve]``.
"""
from __future__ import annotations

from .config import ServerConfig

__all__ = ["ServerConfig", "create_app", "BackgroundServer", "serve"]


def __getattr__(name: str):  # aiohttp is imported only when the server is used
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("BackgroundServer", "serve"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)
