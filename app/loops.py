"""Long-running consumer loops that restart after a failure instead of dying."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class RestartingLoop:
    """Subclasses implement ``run`` (one consumer session, returning once ``stopping`` is
    set); ``run_forever`` starts it again after an outage — no crash loop, no busy loop."""

    name = "loop"
    restart_delay_s = 2.0

    def __init__(self) -> None:
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping.set()

    async def run_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s stopped; restarting in %.0fs", self.name, self.restart_delay_s)
                await asyncio.sleep(self.restart_delay_s)
