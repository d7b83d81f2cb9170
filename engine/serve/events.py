"""WebSocket clients of ``graphrun serve`` and the messages they get, in ComfyUI's format.

Every message is a JSON text frame ``{"type": EVENT, "data": {...}}``. A message for a client id goes to
that client only; one without (``sid=None``) goes to every connected client, as in ComfyUI. The worker
thread publishes through :meth:`EventHub.publish`, which hands the message to the server's event loop:
one publisher task sends them in the order they were published.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

log = logging.getLogger("graphrun.serve")


class EventHub:
    def __init__(self) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.features: dict[str, dict[str, Any]] = {}  # client id -> the feature flags it announced
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, Any, str | None]] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue = asyncio.Queue()

    def publish(self, event: str, data: Any, sid: str | None = None) -> None:
        """Queue a message from any thread (a no-op before the server started)."""
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (event, data, sid))
        except RuntimeError:  # the loop closed between the check and the call (shutdown)
            pass

    async def run(self) -> None:
        """The publisher task: sends queued messages until cancelled."""
        assert self._queue is not None
        while True:
            event, data, sid = await self._queue.get()
            await self.send(event, data, sid)

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        text = json.dumps({"type": event, "data": data}, default=str)
        targets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        for ws in targets:
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError) as exc:  # a client went away mid-send: it is dropped on close
                log.debug("websocket send failed: %s", exc)

    def add(self, sid: str, ws: web.WebSocketResponse) -> None:
        old = self.sockets.pop(sid, None)  # a reconnect with the same clientId replaces the old socket
        if old is not None and old is not ws:
            asyncio.ensure_future(old.close())
        self.sockets[sid] = ws
        self.features[sid] = {}

    def remove(self, sid: str, ws: web.WebSocketResponse) -> None:
        if self.sockets.get(sid) is ws:
            del self.sockets[sid]
            self.features.pop(sid, None)

    async def close_all(self) -> None:
        for ws in list(self.sockets.values()):
            await ws.close()
        self.sockets.clear()
