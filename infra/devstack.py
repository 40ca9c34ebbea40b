"""Starts and stops the local services the platform and its tests run against.

Used by the Makefile (``make run``/``make stop``) and by the test fixtures, so both run
the very same real components: Apache Kafka (KRaft), ``podman system service``, PostgreSQL
and the SMTP sink. Each service keeps a pid file and a log under its state directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KAFKA_VERSION = "3.9.1"
CACHE = Path(os.environ.get("FAAS_CACHE", Path.home() / ".cache" / "faas"))
KAFKA_LIBS = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
CONTAINERS_CONF = ROOT / "infra" / "podman" / "containers.conf"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, what: str, pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            raise RuntimeError(f"{what} exited during start-up")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s}s")


def wait_for_path(path: Path, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not create {path} within {timeout_s}s")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); it is dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def spawn(
    name: str,
    argv: list[str],
    state: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` in its own session, logging to ``state/<name>.log``; writes a pid file."""
    state.mkdir(parents=True, exist_ok=True)
    log = (state / f"{name}.log").open("ab")
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, start_new_session=True, cwd=cwd,
    )  # fmt: skip
    (state / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def stop(name: str, state: Path, timeout_s: float = 20.0) -> bool:
    """Stop the process group recorded in ``state/<name>.pid``; True when something ran."""
    pid_file = state / f"{name}.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    if not _alive(pid):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid):
            return True
    return True


def running(name: str, state: Path) -> bool:
    pid_file = state / f"{name}.pid"
    return pid_file.exists() and _alive(int(pid_file.read_text()))


# -- Kafka (KRaft, one broker) ------------------------------------------------------------------


def start_kafka(state: Path, port: int, controller_port: int | None = None) -> int:
    if not KAFKA_LIBS.is_dir():
        raise RuntimeError(f"Kafka jars missing in {KAFKA_LIBS}: run `make setup`")
    state.mkdir(parents=True, exist_ok=True)
    # The controller port is part of the stored quorum: keep it across restarts.
    port_file = state / "kafka-controller.port"
    if controller_port is None:
        known = port_file.read_text().strip() if port_file.exists() else ""
        controller_port = int(known) if known else free_port()
    port_file.write_text(str(controller_port))
    data = state / "kafka-data"
    props = state / "kafka.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=3",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                "",
            ]
        )
    )
    log4j = state / "kafka-log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=WARN, stdout\n"
        "log4j.logger.kafka.server.KafkaServer=INFO\n"
        "log4j.logger.kafka.server.BrokerServer=INFO\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    classpath = f"{KAFKA_LIBS}/*"
    java = ["java", f"-Dlog4j.configuration=file:{log4j}", "-cp", classpath]
    # Reusing a data dir keeps topics and offsets across restarts (the fault tests need that).
    if not (data / "meta.properties").exists():
        cluster_id = subprocess.run(
            [*java, "kafka.tools.StorageTool", "random-uuid"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            check=True, capture_output=True,
        )  # fmt: skip
    heap = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC"]
    pid = spawn("kafka", [*java[:1], *heap, *java[1:], "kafka.Kafka", str(props)], state)
    wait_for_port(port, 60, "Kafka", pid)
    return pid


# -- podman (Docker Engine API) -----------------------------------------------------------------


def podman_env() -> dict[str, str]:
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF)}


def start_podman_service(state: Path, socket_path: Path) -> int:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    argv = ["podman", "system", "service", "--time=0", f"unix://{socket_path}"]
    # conmon drops an empty `oom` marker file into its working directory on an OOM kill:
    # keep it in the state directory, not in whatever directory started the service.
    pid = spawn("podman", argv, state, podman_env(), cwd=state)
    wait_for_path(socket_path, 30, "podman system service")
    return pid


# -- PostgreSQL ---------------------------------------------------------------------------------


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


def start_postgres(state: Path, port: int) -> str:
    """A throw-away cluster owned by the ``postgres`` OS user; returns its SQLAlchemy URL.

    ``state`` must be reachable by that user (not under a root-only 0700 directory).
    """
    data = state / "pgdata"
    state.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(state, "postgres", "postgres")
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if not (data / "PG_VERSION").exists():
        _run([*run_as, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
              "--no-sync"])  # fmt: skip
    options = f"-p {port} -k {state} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(state / "postgres.log"),
          "-o", options, "-w", "start"])  # fmt: skip
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"


def stop_postgres(state: Path) -> None:
    data = state / "pgdata"
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
        check=False, capture_output=True,
    )  # fmt: skip


def create_database(url: str) -> str:
    """A fresh database on the cluster of ``url``; returns the URL pointing at it."""
    import psycopg

    name = f"faas_{uuid.uuid4().hex[:12]}"
    base = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"


# -- SMTP sink ----------------------------------------------------------------------------------


def start_smtp_sink(state: Path, port: int, mail_dir: Path) -> int:
    argv = [sys.executable, "-m", "app.mail.sink", "--host", "127.0.0.1", "--port", str(port),
            "--mail-dir", str(mail_dir)]  # fmt: skip
    pid = spawn("smtp", argv, state)
    wait_for_port(port, 30, "SMTP sink", pid)
    return pid


# -- meter server and agent ---------------------------------------------------------------------


def start_meter(role: str, state: Path, env: dict[str, str] | None = None) -> int:
    """``python -m meter server|agent`` with the platform's FAAS_* settings from ``env``."""
    name = f"meter-{role}"
    pid = spawn(name, [sys.executable, "-m", "meter", role], state, env)
    time.sleep(0.5)
    if not _alive(pid):
        raise RuntimeError(f"{name} exited at start; see {state / (name + '.log')}")
    return pid


# -- Ray head (dashboard on, token auth on) -----------------------------------------------------


def start_ray_head(state: Path, dashboard_port: int) -> int:
    """``ray start --head --block`` as our child: stopping its process group stops Ray."""
    ray = Path(sys.executable).parent / "ray"
    argv = [str(ray), "start", "--head", "--block", "--disable-usage-stats",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port)]  # fmt: skip
    pid = spawn("ray", argv, state)
    wait_for_port(dashboard_port, 120, "Ray dashboard", pid)
    return pid


def stop_functions(owner: str, grace_s: int = 2) -> int:
    """Stop the function containers this installation started; returns how many."""
    env = {**os.environ, **podman_env()}
    ids = subprocess.run(
        ["podman", "ps", "-q", "--filter", f"label=faas.owner={owner}"],
        capture_output=True, text=True, env=env, check=False,
    ).stdout.split()  # fmt: skip
    if ids:
        subprocess.run(["podman", "stop", "-t", str(grace_s), *ids], capture_output=True, env=env)
    return len(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "service",
        choices=["kafka", "podman", "smtp", "ray", "meter-server", "meter-agent", "functions"],
    )
    parser.add_argument("--state", type=Path, default=ROOT / ".faas")
    parser.add_argument("--port", type=int)
    parser.add_argument("--socket", type=Path)
    parser.add_argument("--mail-dir", type=Path)
    args = parser.parse_args(argv)
    state: Path = args.state.resolve()
    name = args.service
    if args.action == "stop" and name == "functions":
        # The runs stay recorded as running; the control plane closes them on its next start.
        print(f"functions: stopped {stop_functions(os.environ.get('FAAS_HOME', str(state)))}")
        return 0
    if args.action == "stop":
        print(f"{name}: {'stopped' if stop(name, state) else 'was not running'}")
        return 0
    if args.action == "status":
        print(f"{name}: {'running' if running(name, state) else 'stopped'}")
        return 0 if running(name, state) else 1
    if running(name, state):
        print(f"{name}: already running")
        return 0
    if name == "kafka":
        start_kafka(state, args.port or 9092)
    elif name.startswith("meter-"):
        start_meter(name.removeprefix("meter-"), state)
    elif name == "ray":
        start_ray_head(state, args.port or 8265)
    elif name == "podman":
        start_podman_service(state, args.socket or state / "podman.sock")
    else:
        start_smtp_sink(state, args.port or 2525, args.mail_dir or state / "mail")
    print(f"{name}: started (log {state / (name + '.log')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
