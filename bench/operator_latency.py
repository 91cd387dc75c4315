"""Operator benchmark: TuningJob created → Job created, and the operator's CPU and memory.

For each scale (1, 50, 500 TuningJobs by default) on the test ground (a real control
plane, kwok nodes): start a fresh `kubetune operator` watching a fresh namespace,
create N TuningJobs at once from 8 client threads (the burst), and time each from
just before its create request to the moment a watch on Jobs sees its Job (what a
user would see: both API round trips and the watch delivery included). Then, with
the N TuningJobs in place and settled, create 20 more one at a time, 0.25 s apart
(steady state: a user submitting to an operator that manages N jobs), timed the same
way. Sampled from the operator process: CPU seconds used for the burst, CPU use while
idle with N TuningJobs (progress reads and resyncs), resident memory and its peak.

Where the burst's time goes, from the benchmark's own watches (no instrumentation in
the operator): each latency is split at its create response and at the moment a watch
on TuningJobs delivers it (the operator's watch gets it at about the same time). The API server's own metrics give how many requests of each kind it served during
the burst and their mean latency there; the operator's, its reconciles.

    .venv/bin/python -m bench.operator_latency [--scales 1,50,500] [--idle 30] [--json out.json] [--workers N]

Everything runs on this machine, so the figures include sharing its cores with the
API server, etcd, the controllers and kwok. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import watch
from prometheus_client.parser import text_string_to_metric_families

from tests.ground.cluster import Cluster, wait_for
from tests.ground.ground import Ground
from tests.integration.operator_support import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    install_crds,
    tuningjob,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, resident peak) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def apiserver_requests(cluster: Cluster) -> dict[tuple[str, str], tuple[float, float]]:
    """(verb, resource[/subresource]) → (requests, seconds spent) so far, from the API
    server's own metrics (watches excluded: they last as long as they are open)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    totals: dict[tuple[str, str], list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith(("_count", "_sum")) and labels.get("verb") not in (
                "WATCH",
                "CONNECT",
            ):
                resource = labels.get("resource", "") + (
                    "/" + labels["subresource"] if labels.get("subresource") else ""
                )
                entry = totals.setdefault((labels["verb"], resource), [0.0, 0.0])
                entry[0 if sample.name.endswith("_count") else 1] += sample.value
    return {k: (v[0], v[1]) for k, v in totals.items()}


def requests_between(
    before: dict[tuple[str, str], tuple[float, float]],
    after: dict[tuple[str, str], tuple[float, float]],
) -> dict[str, dict[str, float]]:
    """Requests made between two readings, with their mean latency in the API server."""
    result = {}
    for key, (count, seconds) in sorted(after.items()):
        count0, seconds0 = before.get(key, (0.0, 0.0))
        if count - count0 >= 1:
            result[f"{key[0]} {key[1]}"] = {
                "requests": int(count - count0),
                "mean_ms": round(1000 * (seconds - seconds0) / (count - count0), 1),
            }
    return result


def operator_reconciles(operator: OperatorProcess) -> tuple[float, float]:
    """(reconciles, seconds spent reconciling) so far, from the operator's /metrics."""
    values = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            if sample.name in (
                "kubetune_operator_reconcile_seconds_count",
                "kubetune_operator_reconcile_seconds_sum",
            ):
                values[sample.name] = sample.value
    return values["kubetune_operator_reconcile_seconds_count"], values[
        "kubetune_operator_reconcile_seconds_sum"
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_scale(
    cluster: Cluster,
    folder: Path,
    scale: int,
    idle: float,
    probes: int = 20,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ns = cluster.create_namespace(f"bench{scale}", restricted=True)
    operator = OperatorProcess(
        cluster,
        folder,
        [ns],
        lease_namespace=ns,
        name=f"operator-{scale}",
        # Production intervals; small pods so that hundreds fit on the kwok nodes.
        progress_interval_seconds=15,
        resync_seconds=300,
        default_cpu="10m",
        default_memory="64Mi",
        default_shm_size="16Mi",
        **(settings or {}),
    ).start()
    pid = operator.process.pid
    assert pid is not None
    seen: dict[str, float] = {}
    stream = watch.Watch()

    def watch_jobs() -> None:
        for event in stream.stream(cluster.batch.list_namespaced_job, ns, timeout_seconds=600):
            name = event["object"].metadata.name
            seen.setdefault(name, time.perf_counter())
            if len(seen) >= scale + probes:
                stream.stop()

    # The benchmark's own watch on TuningJobs: when the API server delivers a new
    # TuningJob to a watcher (the operator learns of it the same way, from its watch).
    tj_seen: dict[str, float] = {}
    tj_stream = watch.Watch()

    def watch_tuningjobs() -> None:
        for event in tj_stream.stream(
            cluster.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            timeout_seconds=600,
        ):
            tj_seen.setdefault(event["object"]["metadata"]["name"], time.perf_counter())
            if len(tj_seen) >= scale + probes:
                tj_stream.stop()

    for target in (watch_jobs, watch_tuningjobs):
        threading.Thread(target=target, daemon=True).start()
    time.sleep(1.0)  # the watches are established

    sent: dict[str, float] = {}
    returned: dict[str, float] = {}

    def create(i: int) -> None:
        name = f"tj-{i:04d}"
        body = tuningjob(name, resources={"gpus": 0})
        sent[name] = time.perf_counter()
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        returned[name] = time.perf_counter()

    cpu_before = cpu_seconds(pid)
    api_before = apiserver_requests(cluster)
    reconciles_before = operator_reconciles(operator)
    burst_started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(scale)))
    all_created = time.perf_counter()
    wait_for(lambda: len(seen) >= scale, timeout=600, interval=0.2, what=f"{scale} Jobs")
    jobs_done = time.perf_counter()

    def all_have_status() -> bool:
        items = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        return sum(1 for i in items if (i.get("status") or {}).get("phase")) >= scale

    wait_for(all_have_status, timeout=600, interval=1.0, what="every TuningJob to have a status")
    settled = time.perf_counter()
    cpu_burst = cpu_seconds(pid) - cpu_before
    api_burst = requests_between(api_before, apiserver_requests(cluster))
    reconciles, reconcile_seconds = (
        a - b for a, b in zip(operator_reconciles(operator), reconciles_before, strict=True)
    )
    cpu_idle_start = cpu_seconds(pid)
    time.sleep(idle)
    cpu_idle = (cpu_seconds(pid) - cpu_idle_start) / idle
    rss, peak = memory_mib(pid)

    # Steady state: new TuningJobs submitted one by one to an operator managing `scale`.
    for i in range(scale, scale + probes):
        create(i)
        time.sleep(0.25)
    wait_for(lambda: len(seen) >= scale + probes, timeout=120, interval=0.2, what="the probe Jobs")
    steady = [seen[f"tj-{i:04d}"] - sent[f"tj-{i:04d}"] for i in range(scale, scale + probes)]
    phases: dict[str, int] = {}
    for item in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]:
        phase = (item.get("status") or {}).get("phase", "none")
        phases[phase] = phases.get(phase, 0) + 1
    operator.stop()
    cluster.delete_namespace(ns)

    names = [f"tj-{i:04d}" for i in range(scale)]
    latencies = [seen[n] - sent[n] for n in names]
    # Where each burst latency goes, in order: the benchmark's create request; the API
    # server delivering the new TuningJob to a watch (a few ms when idle; it may come
    # just before the create response); then the operator's part: reading it, the
    # spec lock write, the Job create, and the Job's watch delivery to the benchmark.
    create_requests = [returned[n] - sent[n] for n in names]
    delivered = [tj_seen[n] - returned[n] for n in names]
    to_job = [seen[n] - tj_seen[n] for n in names]
    parts = (("create", create_requests), ("delivered", delivered), ("operator", to_job))
    return {
        "tuningjobs": scale,
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p99_s": round(percentile(latencies, 0.99), 3),
        "latency_max_s": round(max(latencies), 3),
        "parts_p50_s": {part: round(statistics.median(values), 3) for part, values in parts},
        "parts_p99_s": {part: round(percentile(values, 0.99), 3) for part, values in parts},
        "operator_reconciles_burst": int(reconciles),
        "operator_reconcile_mean_ms": round(1000 * reconcile_seconds / max(1, reconciles), 1),
        "apiserver_requests_burst": api_burst,
        "steady_p50_s": round(statistics.median(steady), 3),
        "steady_p99_s": round(percentile(steady, 0.99), 3),
        "all_tuningjobs_created_s": round(all_created - burst_started, 2),
        "all_jobs_created_s": round(jobs_done - burst_started, 2),
        "all_statuses_written_s": round(settled - burst_started, 2),
        "operator_cpu_burst_s": round(cpu_burst, 2),
        "operator_cpu_idle_cores": round(cpu_idle, 3),
        "operator_rss_mib": round(rss, 1),
        "operator_peak_rss_mib": round(peak, 1),
        "phases": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,50,500")
    parser.add_argument(
        "--idle", type=float, default=30.0, help="seconds of idle CPU sampling per scale"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--workers", type=int, help="the operator's KUBETUNE_OPERATOR_WORKERS (default: its own)"
    )
    args = parser.parse_args()
    settings = {"workers": args.workers} if args.workers else {}
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        ground = Ground(Path(tmp))
        try:
            cluster = ground.cluster()
            ground.kwok()
            install_crds(cluster)
            results = [
                run_scale(cluster, Path(tmp), int(s), args.idle, settings=settings)
                for s in args.scales.split(",")
            ]
        finally:
            ground.stop()
    print(
        f"{'TuningJobs':>10} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'all TJs s':>9} {'all Jobs s':>10} {'CPU burst s':>11} "
        f"{'CPU idle':>9} {'RSS MiB':>8} {'peak MiB':>9} {'steady p50':>10} {'steady p99':>10}"
    )
    for r in results:
        print(
            f"{r['tuningjobs']:>10} {r['latency_p50_s']:>7} {r['latency_p99_s']:>7} {r['latency_max_s']:>7} "
            f"{r['all_tuningjobs_created_s']:>9} {r['all_jobs_created_s']:>10} {r['operator_cpu_burst_s']:>11} {r['operator_cpu_idle_cores']:>9} "
            f"{r['operator_rss_mib']:>8} {r['operator_peak_rss_mib']:>9} {r['steady_p50_s']:>10} {r['steady_p99_s']:>10}"
        )
    print(
        "\nburst, p50 / p99 of each part (s): the create request; until a watch has the TuningJob; "
        "then until its Job is seen (the operator: lock, Job create, watch delivery)"
    )
    print(
        f"{'TuningJobs':>10} {'create':>15} {'delivered':>15} {'operator':>15} {'reconciles':>10} {'mean ms':>8}"
    )
    for r in results:
        parts = [
            f"{r['parts_p50_s'][k]} / {r['parts_p99_s'][k]}"
            for k in ("create", "delivered", "operator")
        ]
        print(
            f"{r['tuningjobs']:>10} {parts[0]:>15} {parts[1]:>15} {parts[2]:>15} "
            f"{r['operator_reconciles_burst']:>10} {r['operator_reconcile_mean_ms']:>8}"
        )
    for r in results:
        print(
            f"\nAPI requests during the burst of {r['tuningjobs']} (all clients; per TuningJob, mean latency in the API server):"
        )
        for key, value in r["apiserver_requests_burst"].items():
            print(
                f"  {key:<40} {value['requests']:>7} {value['requests'] / r['tuningjobs']:>6.2f}/TJ {value['mean_ms']:>8} ms"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
