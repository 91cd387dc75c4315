"""Benchmark: time to first step of `kubetune train`, phase by phase, cold and warm.

    .venv/bin/python -m bench.first_step                 # tiny Llama on CPU (make bench-first-step)
    .venv/bin/python -m bench.first_step --smoke         # the smallest model, one round
    .venv/bin/python -m bench.first_step --scale 1b      # on a GPU machine (also 8b)

What a pod lives through before its first optimizer step, measured from outside as
the operator sees it: a SeaweedFS server on loopback holds the model (a Llama of the
chosen scale with random weights and the Mistral 7B tokenizer, as bench/train_step/
builds it) and the Dolly sample; `kubetune train -f job.yaml` runs as a new process
(the console script, so interpreter start and imports count) with model, data and
output on S3. The benchmark polls the trainer's Prometheus endpoint every 20 ms and
records when each `kubetune_trainer_phase{phase}` gauge turns 1 and when
`kubetune_trainer_step` first reaches 1; the process is then killed (SIGKILL, as a
preempted pod would be: the benchmark is about starting, and a fresh destination per
run means no run resumes from another's checkpoint). Phases:

- start: process start until the metrics endpoint answers (interpreter, imports,
  manifest parsing, the plan);
- preflight: until `downloading` (the output-writable probe, seeding);
- downloading: the base model from S3 (skipped by the download cache when warm) and
  loading the tokenizer;
- preparing: the dataset from S3, then format, template, tokenize, pack, write
  (read back from the prepared-data cache when warm);
- loading: the 4-bit base model, LoRA adapters, optimizer, looking for a checkpoint;
- first step: until the first optimizer step is done.

Cold: an empty scratch folder (a new pod). Warm: the scratch folder of the previous
cold run (a restarted pod on the same node, or a rerun with an unchanged spec).
Rounds alternate cold and warm; each phase is reported as the median over rounds and
the fastest round.
The timings come from polling, so each boundary is known to about 20 ms (more while
the trainer holds the GIL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.common import RESULTS, Report, markdown_table
from bench.train_step.inputs import DOLLY, build_model_folder, job_manifest
from bench.train_step.scales import SCALES, Scale

POLL_SECONDS = 0.02
PHASES = ("start", "preflight", "downloading", "preparing", "loading", "first step")
BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[str, float] | None:
    """The trainer's metrics as {name{labels}: value}, or None when it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def current_phase(metrics: dict[str, float]) -> str | None:
    for key, value in metrics.items():
        if key.startswith("kubetune_trainer_phase{") and value == 1.0:
            return key.split('phase="', 1)[1].split('"', 1)[0]
    return None


def one_run(
    job_file: Path, scratch: Path, env: dict[str, str], log: Path, timeout: float
) -> dict[str, float]:
    """Start `kubetune train`, watch its endpoint until step 1; seconds since start per event."""
    port = free_port()
    kubetune = Path(sys.executable).parent / "kubetune"
    command = [
        str(kubetune), "train", "-f", str(job_file), "--scratch", str(scratch),
        "--metrics-port", str(port), "--log-format", "json",
    ]  # fmt: skip
    events: dict[str, float] = {}
    with log.open("w") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while True:
                now = time.perf_counter() - started
                if process.poll() is not None:
                    raise RuntimeError(
                        f"kubetune train exited with {process.returncode} before its first step; "
                        f"log tail:\n{log.read_text()[-3000:]}"
                    )
                if now > timeout:
                    raise RuntimeError(f"no first step within {timeout:.0f}s; see {log}")
                metrics = scrape(port)
                if metrics is not None:
                    events.setdefault("endpoint", now)
                    phase = current_phase(metrics)
                    if phase is not None:
                        events.setdefault(phase, now)
                    if metrics.get("kubetune_trainer_step", 0) >= 1:
                        events["first step"] = now
                        return events
                time.sleep(POLL_SECONDS)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def phases(events: dict[str, float]) -> dict[str, float]:
    """Durations of PHASES from the event times (a phase not seen lasted until the next one)."""
    order = ["endpoint", "downloading", "preparing", "loading", "training", "first step"]
    times = [0.0]
    for name in order:
        times.append(events.get(name, times[-1]))
    durations = {
        name: round(b - a, 3) for name, a, b in zip(PHASES, times, times[1:], strict=False)
    }
    durations["total"] = round(events["first step"], 3)
    return durations


def cache_hits(log: Path) -> dict[str, bool]:
    """What a run found in its scratch folder, from the trainer's own log lines."""
    text = log.read_text(errors="replace")
    model = any(
        "downloaded s3://" in line and "/model/" in line and ": 0 files (0 bytes)" in line
        for line in text.splitlines()
    )
    return {"model": model, "preparedData": "prepared data found in the cache" in text}


def run(scale: Scale, rounds: int, workdir: Path, timeout: float, *, prime: bool) -> dict[str, Any]:
    """`prime`: one uncounted run first, which compiles the trainer's bytecode and brings
    the model files, libraries and data into the OS page cache for every counted run."""
    from tests.ground.s3 import SeaweedS3

    model = build_model_folder(scale, workdir / "model")
    with SeaweedS3.start(workdir / "seaweed") as s3:
        assert s3.endpoint is not None
        client = s3.endpoint.client()
        client.create_bucket(Bucket=BUCKET)
        model_bytes = 0
        for path in sorted(model.iterdir()):
            client.upload_file(str(path), BUCKET, f"model/{path.name}")
            model_bytes += path.stat().st_size
        client.upload_file(str(DOLLY), BUCKET, "data/dolly.jsonl")
        env = {**os.environ, **s3.endpoint.env(), "TQDM_DISABLE": "1"}
        # As in the trainer image (UV_COMPILE_BYTECODE=1): imports load compiled bytecode.
        # Where PYTHONDONTWRITEBYTECODE is set, every process would compile every module
        # it imports again (seconds), which no pod does.
        env.pop("PYTHONDONTWRITEBYTECODE", None)

        results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
        plan = [(round_, kind) for round_ in range(rounds) for kind in ("cold", "warm")]
        if prime:
            plan.insert(0, (-1, "cold"))
        for round_, kind in plan:
            scratch = workdir / f"scratch-{round_}"
            manifest = job_manifest(
                scale,
                model,
                workdir / "unused",
                packing=True,
                max_steps=scale.warmup + scale.steps,
            )
            spec = manifest["spec"]
            spec["model"]["source"] = f"s3://{BUCKET}/model/"
            spec["dataset"]["source"] = f"s3://{BUCKET}/data/dolly.jsonl"
            spec["output"]["destination"] = f"s3://{BUCKET}/out/{round_}-{kind}/"
            spec["s3"] = s3.endpoint.spec()
            job_file = workdir / f"job-{round_}-{kind}.json"
            job_file.write_text(json.dumps(manifest, indent=2))
            log = workdir / f"train-{round_}-{kind}.log"
            events = one_run(job_file, scratch, env, log, timeout)
            hits = cache_hits(log)
            if hits != {"model": kind == "warm", "preparedData": kind == "warm"}:
                raise RuntimeError(f"a {kind} run found {hits} in its scratch folder; see {log}")
            durations = phases(events)
            durations["loadAverage"] = round(os.getloadavg()[0], 2)
            if kind == "warm" or round_ < 0:
                # Done with this scratch folder: an 8B model is 15 GB per copy.
                shutil.rmtree(scratch, ignore_errors=True)
            if round_ < 0:
                print(f"  priming run (not counted): total {durations['total']:.2f}s", flush=True)
                continue
            results[kind].append(durations)
            print(
                f"  round {round_ + 1} {kind}: "
                + ", ".join(f"{p} {durations[p]:.2f}s" for p in (*PHASES, "total")),
                flush=True,
            )
    return {
        "modelMiB": round(model_bytes / 2**20, 1),
        "datasetMiB": round(DOLLY.stat().st_size / 2**20, 2),
        # Checked on every run (else the benchmark stops): warm runs reuse both caches,
        # cold runs neither.
        "warmCacheHits": {"model": True, "preparedData": True},
        "median": {
            kind: {p: round(statistics.median(r[p] for r in runs), 3) for p in (*PHASES, "total")}
            for kind, runs in results.items()
        },
        # The fastest round of each phase: other work on the machine only adds time.
        "min": {
            kind: {p: round(min(r[p] for r in runs), 3) for p in (*PHASES, "total")}
            for kind, runs in results.items()
        },
        "runs": results,
    }


def table(results: dict[str, Any]) -> str:
    median, fastest = results["median"], results["min"]
    rows = [
        [
            phase,
            f"{median['cold'][phase]:.2f} ({fastest['cold'][phase]:.2f})",
            f"{median['warm'][phase]:.2f} ({fastest['warm'][phase]:.2f})",
        ]
        for phase in (*PHASES, "total")
    ]
    return markdown_table(
        ["phase", "cold: seconds, median (fastest)", "warm: seconds, median (fastest)"], rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=[s for s in SCALES if s != "smoke"], default="tiny")
    parser.add_argument("--smoke", action="store_true", help="the smallest model, one round")
    parser.add_argument("--rounds", type=int, default=5, help="cold + warm pairs")
    parser.add_argument(
        "--threads", type=int, help="torch threads in the trainer (default: the scale's)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds to the first step, per run"
    )
    parser.add_argument("--workdir", type=Path, help="keep the model, logs and server data here")
    parser.add_argument(
        "--json", type=Path, help="the JSON report (default bench/results/first-step-SCALE.json)"
    )
    args = parser.parse_args()
    scale = SCALES["smoke" if args.smoke else args.scale]
    if args.threads is not None:
        scale = replace(scale, threads=args.threads)
    rounds = 1 if args.smoke else args.rounds
    if scale.threads:
        os.environ["OMP_NUM_THREADS"] = str(scale.threads)  # torch in the trainer reads it
    report = Report(
        "first_step", smoke=args.smoke, settings={"scale": asdict(scale), "rounds": rounds}
    )
    print(report.header())
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="kubetune-bench-first-step-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        results = run(scale, rounds, workdir, args.timeout, prime=not args.smoke)
    print(table(results))
    default = None if args.smoke else RESULTS / f"first-step-{scale.name}.json"
    report.finish(results, args.json or default)


if __name__ == "__main__":
    main()
