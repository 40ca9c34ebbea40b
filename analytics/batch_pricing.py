"""Pricing a batch of stopped runs progressively: the runs' samples settle together (one
wait for the grace period and the ingestor's progress, see ``analytics.settling``);
tenants are priced concurrently (bounded), each tenant's runs in finish order so the
monthly allowance is consumed in order, a few settled runs at a time. Each chunk is
stored, then published, then reported done — as it goes, not at the batch's end.

A run whose invoice is already stored (a redelivered ``stopped`` event) is published
again, never priced twice: the notifier drops the duplicate by invoice id and version.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import polars as pl

from analytics.invoice_store import InvoiceStore
from analytics.invoicing import build_invoices
from analytics.settling import RunSamples
from app.events import Stopped
from app.invoices import Invoice
from app.tariffs.schemas import TariffView

Done = Callable[[list[str]], None]
Publish = Callable[[list[Invoice]], Awaitable[None]]
Settled = dict[str, "asyncio.Future[pl.DataFrame]"]


@dataclass
class InvoicerCounters:
    invoiced: int = 0
    republished: int = 0
    dead_lettered: int = 0
    batches: int = 0


def ignore_done(_: list[str]) -> None:
    return None


class BatchPricer:
    def __init__(
        self,
        samples: RunSamples,
        store: InvoiceStore,
        tariff_of_run: Callable[[str], TariffView],
        publish: Publish,
        counters: InvoicerCounters,
        *,
        concurrency: int = 4,
        chunk: int = 25,
    ) -> None:
        if concurrency < 1 or chunk < 1:
            raise ValueError("concurrency and chunk must be >= 1")
        self._samples, self._store, self._tariff_of_run = samples, store, tariff_of_run
        self._publish, self._counters = publish, counters
        self._pricing = asyncio.Semaphore(concurrency)
        self._chunk = chunk

    async def process(self, stopped_runs: Sequence[Stopped], done: Done = ignore_done) -> None:
        """Invoices a batch; ``done`` hears each run id once its invoice is published."""
        runs = list({s.run_id: s for s in stopped_runs}.values())  # a run twice in a batch
        if not runs:
            return
        existing = await self._store.current_many([r.run_id for r in runs])
        if existing:
            await self._publish(list(existing.values()))
            self._counters.republished += len(existing)
            done(list(existing))
        new = [r for r in runs if r.run_id not in existing]
        if not new:
            return
        tariffs = await asyncio.to_thread(
            lambda: {r.run_id: self._tariff_of_run(r.run_id) for r in new}
        )
        by_tenant: dict[str, list[Stopped]] = defaultdict(list)
        for stopped in sorted(new, key=lambda s: (s.finished_at, s.run_id)):
            by_tenant[stopped.tenant].append(stopped)
        loop = asyncio.get_running_loop()
        settled: Settled = {r.run_id: loop.create_future() for r in new}
        async with asyncio.TaskGroup() as group:
            group.create_task(self._settle(new, settled))
            for tenant_runs in by_tenant.values():
                group.create_task(self._tenant(tenant_runs, settled, tariffs, done))

    async def _settle(self, runs: list[Stopped], settled: Settled) -> None:
        finished = {r.run_id: r.finished_at for r in runs}
        async with contextlib.aclosing(self._samples.settle_many(finished)) as settling:
            async for run_id, samples in settling:
                settled[run_id].set_result(samples)

    async def _tenant(
        self, runs: list[Stopped], settled: Settled, tariffs: dict[str, TariffView], done: Done
    ) -> None:
        """One tenant's runs in finish order, in chunks of those already settled."""
        while runs:
            await settled[runs[0].run_id]
            chunk = list(
                itertools.takewhile(lambda r: settled[r.run_id].done(), runs[: self._chunk])
            )
            runs = runs[len(chunk) :]
            priced = [(r, settled[r.run_id].result(), tariffs[r.run_id]) for r in chunk]
            async with self._pricing:
                invoices = await build_invoices(priced, self._store)
                await self._store.save(invoices)
            await self._publish(invoices)
            self._counters.invoiced += len(invoices)
            done([i.run_id for i in invoices])
