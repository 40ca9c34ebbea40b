"""``faas``: run functions, follow them, read bills, manage tariffs (``faas --help``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.cli.client import Api, ApiError

app = typer.Typer(help="FaaS on Ray: run containers, bill what they used.", no_args_is_help=True)
tariffs = typer.Typer(
    help="Manage tariffs (admin token from FAAS_ADMIN_TOKEN).", no_args_is_help=True
)
app.add_typer(tariffs, name="tariffs")
keys = typer.Typer(
    help="Tenant API keys (admin token from FAAS_ADMIN_TOKEN).", no_args_is_help=True
)
app.add_typer(keys, name="keys")
out = Console()
err = Console(stderr=True)
DEFAULT_URL = "http://127.0.0.1:8080"
FINAL = {"succeeded", "failed", "timed_out", "stopped"}
Url = Annotated[str, typer.Option(envvar="FAAS_URL", help="platform API")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar="FAAS_API_KEY", help="tenant API key (needed in production mode)"),
]


@contextmanager
def _reported() -> Iterator[None]:
    """API errors become a message on stderr and an exit code (2 for auth, else 1)."""
    try:
        yield
    except ApiError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2 if exc.status in (401, 403) else 1) from None


def _show(data: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json or table is None:
        out.print_json(json.dumps(data))
    else:
        out.print(table)


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--env")
        env[name] = value
    return env


def _run_table(run: dict[str, Any]) -> Table:
    table = Table(show_header=False)
    for key in ("id", "status", "image_name", "email", "exit_code", "reason", "message",
                "started_at", "finished_at", "tariff"):  # fmt: skip
        table.add_row(key, "" if run.get(key) is None else str(run[key]))
    return table


@app.command()
def run(
    image: str,
    email: Annotated[str, typer.Option(help="tenant: the bill goes here")],
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE, repeatable")
    ] = None,
    cpu: Annotated[float | None, typer.Option(help="CPU cores")] = None,
    memory: Annotated[int | None, typer.Option(help="memory limit, MiB")] = None,
    timeout: Annotated[int | None, typer.Option(help="wall-clock limit, s")] = None,
    tariff: Annotated[str | None, typer.Option(help="tariff name or id")] = None,
    follow: Annotated[bool, typer.Option(help="wait for the end, printing logs")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Run IMAGE for a tenant: prints the accepted run (pending: it starts shortly);
    with --follow, waits for its end, printing its logs."""
    body: dict[str, Any] = {"image_name": image, "email": email, "env": _env(env or [])}
    for key, value in (
        ("cpu", cpu),
        ("memory_mb", memory),
        ("timeout_s", timeout),
        ("tariff", tariff),
    ):
        if value is not None:
            body[key] = value
    api = Api(url, api_key=api_key)
    with _reported():
        accepted = api.call("POST", "/v1/functions/run", json=body)
        if not follow:
            _show(accepted, as_json, _run_table(accepted))
            return
        final = _follow(api, accepted["id"], as_json)
    _show(final, as_json, _run_table(final))
    if final["status"] != "succeeded":
        raise typer.Exit(3)


def _follow(api: Api, run_id: str, quiet: bool) -> dict[str, Any]:
    printed = 0
    while True:
        run = api.call("GET", f"/v1/functions/{run_id}")
        logs = api.call("GET", f"/v1/functions/{run_id}/logs")
        if not quiet and len(logs) > printed:
            out.out(logs[printed:], end="")
        printed = max(printed, len(logs))
        if run["status"] in FINAL:
            return dict(run)
        time.sleep(0.5)


@app.command()
def status(
    run_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """Show a run."""
    with _reported():
        run = Api(url, api_key=api_key).call("GET", f"/v1/functions/{run_id}")
    _show(run, as_json, _run_table(run))


@app.command()
def logs(
    run_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Print a run's stdout and stderr."""
    api = Api(url, api_key=api_key)
    with _reported():
        if follow:
            _follow(api, run_id, quiet=False)
        else:
            out.out(api.call("GET", f"/v1/functions/{run_id}/logs"), end="")


@app.command()
def stop(
    run_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """Stop a run."""
    with _reported():
        run = Api(url, api_key=api_key).call("POST", f"/v1/functions/{run_id}/stop")
    _show(run, as_json, _run_table(run))


@app.command()
def bills(
    email: str, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """A tenant's invoices and totals."""
    with _reported():
        billing = Api(url, api_key=api_key).call("GET", f"/billing/{email}")
    table = Table(title=f"{billing['tenant']}: {billing['count']} invoice(s)")
    for column in ("finished", "run", "image", "tariff", "cpu-s", "GiB-s", "total"):
        table.add_column(
            column, justify="right" if column in ("cpu-s", "GiB-s", "total") else "left"
        )
    for invoice in billing["invoices"]:
        lines = {line["kind"]: line for line in invoice["lines"]}
        table.add_row(
            invoice["finished_at"][:19], invoice["run_id"][:8], invoice["image_name"], invoice["tariff"],
            lines["cpu"]["quantity"], lines["memory"]["quantity"], f"{invoice['total']} {invoice['currency']}",
        )  # fmt: skip
    for total in billing["totals"]:
        table.add_row("", "", "", "", "", "total", f"{total['total']} {total['currency']}")
    _show(billing, as_json, table)


def _tariff_table(items: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("id", "name", "currency", "cpu-s", "GiB-s", "execution", "second", "default"):
        table.add_column(column)
    for t in items:
        table.add_row(
            str(t["id"]), t["name"], t["currency"], t["price_cpu_second"], t["price_gib_second"],
            t["price_execution"], t["price_second"], "yes" if t["is_default"] else "",
        )  # fmt: skip
    return table


@tariffs.command("list")
def tariffs_list(url: Url = DEFAULT_URL, as_json: AsJson = False) -> None:
    """List tariffs."""
    with _reported():
        items = Api(url, admin=True).call("GET", "/v1/tariffs")
    _show(items, as_json, _tariff_table(items))


def _fields(pairs: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not FIELD=VALUE", param_hint="--set")
        fields[name] = {"true": True, "false": False}.get(value.lower(), value)
    return fields


Sets = Annotated[
    list[str], typer.Option("--set", help="FIELD=VALUE, e.g. price_cpu_second=0.00002")
]


@tariffs.command("create")
def tariffs_create(name: str, sets: Sets, url: Url = DEFAULT_URL, as_json: AsJson = False) -> None:
    """Create tariff NAME with --set FIELD=VALUE for each field."""
    with _reported():
        created = Api(url, admin=True).call(
            "POST", "/v1/tariffs", json={"name": name, **_fields(sets)}
        )
    _show(created, as_json, _tariff_table([created]))


@tariffs.command("update")
def tariffs_update(ref: str, sets: Sets, url: Url = DEFAULT_URL, as_json: AsJson = False) -> None:
    """Change fields of tariff REF (id or name)."""
    with _reported():
        updated = Api(url, admin=True).call("PATCH", f"/v1/tariffs/{ref}", json=_fields(sets))
    _show(updated, as_json, _tariff_table([updated]))


@tariffs.command("delete")
def tariffs_delete(ref: str, url: Url = DEFAULT_URL) -> None:
    """Delete tariff REF (soft: old invoices stay explainable)."""
    with _reported():
        Api(url, admin=True).call("DELETE", f"/v1/tariffs/{ref}")
    out.print(f"deleted {ref}")


@keys.command("issue")
def keys_issue(
    email: str,
    name: Annotated[str, typer.Option(help="a label, e.g. where the key is used")] = "",
    url: Url = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Issue an API key for tenant EMAIL. The secret is printed once: store it now."""
    with _reported():
        issued = Api(url, admin=True).call("POST", f"/v1/tenants/{email}/keys", json={"name": name})
    if as_json:
        _show(issued, True)
    else:
        out.print(f"{issued['id']}  {issued['key']}")
        err.print("the key is shown only now; send it as FAAS_API_KEY / --api-key")


@keys.command("list")
def keys_list(email: str, url: Url = DEFAULT_URL, as_json: AsJson = False) -> None:
    """Tenant EMAIL's keys (never the secrets)."""
    with _reported():
        items = Api(url, admin=True).call("GET", f"/v1/tenants/{email}/keys")
    table = Table()
    for column in ("id", "prefix", "name", "created_at", "revoked_at"):
        table.add_column(column)
    for k in items:
        table.add_row(k["id"], f"{k['prefix']}…", k["name"], k["created_at"], k["revoked_at"] or "")
    _show(items, as_json, table)


@keys.command("revoke")
def keys_revoke(email: str, key_id: str, url: Url = DEFAULT_URL) -> None:
    """Revoke tenant EMAIL's key KEY_ID at once."""
    with _reported():
        Api(url, admin=True).call("DELETE", f"/v1/tenants/{email}/keys/{key_id}")
    out.print(f"revoked {key_id}")


@app.command()
def rebill(
    since: Annotated[str, typer.Option("--from", help="finished at or after (ISO date)")],
    until: Annotated[str, typer.Option("--to", help="finished before (ISO date)")],
    tenant: Annotated[list[str] | None, typer.Option(help="only this tenant (repeatable)")] = None,
    tariff: Annotated[
        int | None, typer.Option(help="only invoices priced with this tariff id")
    ] = None,
    what_if: Annotated[str | None, typer.Option(help="price with this tariff instead")] = None,
    dry_run: Annotated[bool, typer.Option(help="change nothing; write --report")] = False,
    report: Annotated[
        str | None, typer.Option(help="old vs new per invoice (.csv/.parquet)")
    ] = None,
) -> None:
    """Re-bill a period as a Ray job on the running cluster (new invoice versions)."""
    argv = [sys.executable, "-m", "deployments.rebill_job", "--from", since, "--to", until]
    for name in tenant or []:
        argv += ["--tenant", name]
    for flag, value in (("--tariff", tariff), ("--what-if", what_if), ("--report", report)):
        if value is not None:
            argv += [flag, str(value)]
    if dry_run:
        argv.append("--dry-run")
    # The job needs Ray; the CLI itself stays a plain HTTP client.
    raise typer.Exit(subprocess.call(argv))


def main() -> None:
    app()
