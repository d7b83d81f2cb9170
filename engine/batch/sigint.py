"""Ctrl-C during a batch: the first asks it to stop at a row boundary, a second aborts."""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable, TextIO


class SigintStop:
    """First Ctrl-C asks the batch to stop; a second one aborts at once (KeyboardInterrupt).

    ``eager`` (Ray) raises KeyboardInterrupt on the first Ctrl-C too, unless the driver is
    committing a row: every unfinished row lives on the workers, so nothing is lost by stopping
    now, and waiting for the next result could take a whole row.
    """

    def __init__(self, stop: threading.Event, on_stop: Callable[[], None], stream: TextIO) -> None:
        self.stop = stop
        self.on_stop = on_stop
        self.stream = stream
        self.eager = False
        self.committing = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        self.on_stop()
        print("\ninterrupt: stopping the batch (Ctrl-C again to abort now)", file=self.stream, flush=True)
        if self.eager and not self.committing:
            raise KeyboardInterrupt

    def install(self) -> None:
        """(Re)install the handler: Ray's init may replace SIGINT handlers."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread
        previous = signal.signal(signal.SIGINT, self._handle)
        if not self._installed:
            self._previous = previous
            self._installed = True

    def __enter__(self) -> "SigintStop":
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
