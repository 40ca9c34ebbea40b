"""``python -m meter server`` or ``python -m meter agent``: the processes beside Ray."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from app.kafka import KafkaEventPublisher, ensure_topics
from app.settings import Settings
from meter.agent import MeterAgent, udp_sender
from meter.cgroups import CgroupReader
from meter.discovery import DockerDiscovery
from meter.server import MeterServer


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(settings: Settings) -> None:
    with contextlib.suppress(Exception):  # the flusher retries while Kafka is away
        await ensure_topics(settings.kafka)
    publisher = KafkaEventPublisher(settings.kafka)
    server = MeterServer(settings.meter, settings.kafka, publisher)
    await server.start()
    logging.info(
        "meter server on udp://%s:%s, counters on http://%s:%s/metrics",
        settings.meter.host, settings.meter.port, settings.meter.host, settings.meter.metrics_port,
    )  # fmt: skip
    try:
        await _until_signalled()
    finally:
        await server.stop()
        await publisher.close()


async def sample(settings: Settings, drop_ratio: float) -> None:
    assert settings.runtime.docker_url is not None
    discovery = DockerDiscovery(settings.runtime.docker_url)
    agent = MeterAgent(
        settings, discovery, CgroupReader(settings.meter.cgroup_root),
        udp_sender(settings.meter.host, settings.meter.port), drop_ratio=drop_ratio,
    )  # fmt: skip
    task = asyncio.create_task(agent.run_forever())
    logging.info("meter agent sampling every %s ms", settings.meter.interval_ms)
    try:
        await _until_signalled()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        discovery.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meter", description=__doc__)
    parser.add_argument("role", choices=["server", "agent"])
    parser.add_argument(
        "--drop-ratio", type=float, default=0.0, help="agent: lose this share (tests)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    if args.role == "server":
        asyncio.run(serve(settings))
    else:
        asyncio.run(sample(settings, args.drop_ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
