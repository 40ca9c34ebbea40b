"""Runs every benchmark and prints the figures recorded in docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import http_overhead, ingest, memory_footprint, meter_server, rebill, run_latency
from bench.stack import platform_stack

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    report: dict[str, object] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}",
    }
    with platform_stack() as stack:
        latency = run_latency.measure(stack)
        # Records as the meter server packs them, and one sample a record (the old layout).
        ingested = ingest.measure(stack.kafka_bootstrap, count=1_000_000)
        ingested_single = ingest.measure(stack.kafka_bootstrap, count=1_000_000, flush=1)
        metered = meter_server.measure(stack.kafka_bootstrap)  # 500 runs: ~200 Hz each
        metered_4hz = meter_server.measure(stack.kafka_bootstrap, runs=20_000)  # the agent's
        sustained = meter_server.measure_sustained(stack.kafka_bootstrap)
        batched = meter_server.measure_batched(stack.kafka_bootstrap)  # what the agent sends
    ours, api, cli = latency["ours"], latency["api"], latency["cli"]
    report["run_latency"] = latency
    report["ingest"] = ingested
    report["ingest_one_sample_a_record"] = ingested_single
    report["meter_server"] = metered
    report["meter_server_20000_runs"] = metered_4hz
    report["meter_server_sustained"] = sustained
    report["meter_server_batched"] = batched
    report["rebill"] = rebill.measure()
    report["http_overhead"] = http_overhead.measure(http_overhead.parse_args([]))
    # 200 concurrent runs and the memory they cost need the whole platform (meter, invoicer,
    # notifier, SMTP sink) that `make run` starts.
    home, api = Path(".faas"), "http://127.0.0.1:8080"
    report["load_and_memory"] = (
        memory_footprint.measure(home, api)
        if memory_footprint.platform_running(home, api)
        else "skipped: start the platform with `make run` first"
    )
    report["ratios"] = {
        "ours_vs_api_p50": ours["p50_ms"] / api["p50_ms"],
        "ours_vs_cli_p50": ours["p50_ms"] / cli["p50_ms"],
        "ingestor_vs_bare_consume": ingested["ingestor_samples_per_s"]
        / ingested["bare_consume_samples_per_s"],
        "ingestor_vs_bare_insert": ingested["ingestor_samples_per_s"]
        / ingested["bare_insert_arrow_samples_per_s"],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{report['when']}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
