"""``python -m meter.server`` and ``python -m meter.agent`` as processes, configured by FAAS_*
environment variables, metering a real container into Kafka and stopping cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import docker
import httpx

from app.events import NodeEvent, UsageSample
from app.kafka import ensure_topics
from app.settings import KafkaSettings
from infra import devstack
from tests.integration.meter_kit import run_records

ROOT = Path(__file__).resolve().parents[2]


async def spawn(module: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def stop(process: asyncio.subprocess.Process) -> tuple[int | None, str]:
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), timeout=20)
    return process.returncode, err.decode()


async def test_server_and_agent_processes(
    kafka_bootstrap: str, podman_url: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap, metrics_topic=f"cli-metrics-{suffix}",
        node_events_topic=f"cli-nodes-{suffix}",
    )  # fmt: skip
    await ensure_topics(kafka)
    metrics_port = devstack.free_port()
    env = {
        **os.environ,
        "FAAS_HOME": str(tmp_path),
        "FAAS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FAAS_KAFKA_METRICS_TOPIC": kafka.metrics_topic,
        "FAAS_KAFKA_NODE_EVENTS_TOPIC": kafka.node_events_topic,
        "FAAS_METER_SECRET": "cli-test-secret",
        "FAAS_METER_PORT": str(devstack.free_port()),
        "FAAS_METER_METRICS_PORT": str(metrics_port),
        "FAAS_METER_FLUSH_MS": "50",
        "FAAS_METER_NODE": "cli-node",
        "FAAS_RUNTIME_DOCKER_URL": podman_url,
    }
    server = await spawn("meter.server", env)
    agent = await spawn("meter.agent", env)
    client = docker.DockerClient(base_url=podman_url, version="1.41")
    run_id = str(uuid.uuid4())
    try:
        devstack.wait_for_port(metrics_port, 30, "meter server", server.pid)
        await asyncio.sleep(1.0)  # the agent's interpreter start
        container = client.containers.run(
            "localhost/faas-mem", environment={"MEM_MB": "16", "DURATION_S": "2"},
            labels={"faas.run_id": run_id, "faas.tenant": "cli@example.com"},
            mem_limit="64m", detach=True,
        )  # fmt: skip
        try:
            assert container.wait(timeout=30)["StatusCode"] == 0
            await asyncio.sleep(1.5)  # final datagram, its repeats and EXITED
        finally:
            container.remove(force=True)
        async with httpx.AsyncClient() as http:
            counters = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics.json")).json()
    finally:
        agent_rc, agent_log = await stop(agent)
        server_rc, server_log = await stop(server)
        client.close()
    assert (agent_rc, server_rc) == (0, 0), (agent_log, server_log)
    assert "meter agent stopped" in agent_log and "meter server stopped" in server_log
    # The FINAL repeats are duplicates, not replays. At least 2: the agent meters every
    # function container on this (shared) machine, other tests' too.
    assert counters["accepted"] >= 5 and counters["dropped"]["duplicate"] >= 2
    assert counters["dropped"]["replayed"] == 0
    samples = [
        UsageSample.model_validate_json(line)
        for v in await run_records(kafka_bootstrap, kafka.metrics_topic, run_id)
        for line in v.split(b"\n")  # a record carries one or more of a run's samples
    ]
    events = [
        NodeEvent.model_validate_json(v)
        for v in await run_records(kafka_bootstrap, kafka.node_events_topic, run_id)
    ]
    assert samples and samples[-1].final and samples[-1].node == "cli-node"
    assert [s.final for s in samples].count(True) == 1  # its copies were not produced
    assert samples[-1].tenant == "cli@example.com"
    # The hog's level was metered. Not necessarily the final sample's: its reading may
    # fall in the exit, while the memory is being freed (tests/integration/test_meter_cgroup_podman.py).
    assert 16 << 20 < max(s.memory_bytes for s in samples) < 20 << 20
    assert [e.type for e in events] == ["container.started", "container.exited"]
