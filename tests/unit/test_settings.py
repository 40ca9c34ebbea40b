from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'faas.db'}"
    assert settings.clickhouse.url == f"chdb://{tmp_path / 'clickhouse'}"
    assert settings.runtime.docker_url == f"unix://{tmp_path / 'podman.sock'}"
    assert settings.smtp.mail_dir == tmp_path / "mail"
    assert settings.runtime.owner == str(tmp_path)
    assert settings.kafka.bootstrap == "127.0.0.1:9092"
    assert settings.http.port == 8080
    assert settings.meter.port == 9999


def test_nested_variables_use_the_design_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_DATABASE_URL", "postgresql://db/faas")
    monkeypatch.setenv("FAAS_KAFKA_BOOTSTRAP", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("FAAS_CLICKHOUSE_URL", "http://clickhouse:8123")
    monkeypatch.setenv("FAAS_SMTP_HOST", "relay.example.com")
    monkeypatch.setenv("FAAS_SMTP_STARTTLS", "true")
    monkeypatch.setenv("FAAS_METER_SECRET", "s3cret")
    monkeypatch.setenv("FAAS_RUNTIME", "kubernetes")
    settings = Settings()
    assert settings.database_url == "postgresql://db/faas"
    assert settings.kafka.bootstrap == "kafka-0:9092,kafka-1:9092"
    assert settings.clickhouse.url == "http://clickhouse:8123"
    assert settings.smtp.host == "relay.example.com" and settings.smtp.starttls
    assert settings.meter.secret.get_secret_value() == "s3cret"
    assert settings.runtime.kind == "kubernetes"


def test_runtime_limits_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_RUNTIME_MAX_CPU", "4")
    assert Settings().runtime.max_cpu == 4.0


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"kafka": {"bootstrap": "no-port"}}, "bootstrap"),
        ({"clickhouse": {"url": "mysql://x"}}, "url"),
        ({"runtime": {"kind": "docker-swarm"}}, "kind"),
        ({"runtime": {"default_cpu": 8, "max_cpu": 2}}, "default_cpu"),
        ({"smtp": {"port": 70000}}, "port"),
    ],
)
def test_each_subsystem_validates_itself(override: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**override)  # type: ignore[arg-type]


def test_placeholder_secrets_refused_outside_local_mode() -> None:
    with pytest.raises(ValidationError, match="FAAS_ADMIN_TOKEN"):
        Settings(mode="production", meter={"secret": "x"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="FAAS_METER_SECRET"):
        Settings(mode="production", admin_token="real-token")  # type: ignore[arg-type]
    ok = Settings(mode="production", admin_token="t", meter={"secret": "s"})  # type: ignore[arg-type]
    assert ok.mode == "production"


def test_placeholders_are_fine_locally() -> None:
    assert Settings(mode="local").admin_token.get_secret_value() == "changethis"


def test_start_concurrency_defaults_to_four_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().runtime.start_concurrency == 4
    assert Settings().runtime.close_concurrency == 4
    monkeypatch.setenv("FAAS_RUNTIME_START_CONCURRENCY", "2")
    assert Settings().runtime.start_concurrency == 2
    monkeypatch.setenv("FAAS_RUNTIME_START_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="start_concurrency"):
        Settings()
