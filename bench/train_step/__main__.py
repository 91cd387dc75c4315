"""`python -m bench.train_step`: the command line (bench/train_step/__init__.py says what it
measures); `--worker` runs one contender in this process for the harness."""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import bench.train_step
from bench.common import RESULTS, Report
from bench.train_step.contenders import CONTENDERS
from bench.train_step.harness import run, table, worker
from bench.train_step.inputs import LORA
from bench.train_step.scales import SCALES, Scale


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_step",
        description=(bench.train_step.__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--scale", choices=[s for s in SCALES if s != "smoke"], default="tiny")
    parser.add_argument(
        "--smoke", action="store_true", help="the smallest model, 3 steps, one round"
    )
    parser.add_argument("--rounds", type=int, help="override the scale's rounds")
    parser.add_argument(
        "--threads", type=int, help="override the scale's torch threads (0: torch's default)"
    )
    parser.add_argument(
        "--attention", help="TRL's and HF Trainer's attn_implementation (default: sdpa)"
    )
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument(
        "--workdir", type=Path, help="keep the model and data here (default: a temporary folder)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    parser.add_argument(
        "--json", type=Path, help="the JSON report (default bench/results/train-step-SCALE.json)"
    )
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-scale", help=argparse.SUPPRESS)
    parser.add_argument("--worker-inputs", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(
            args.worker,
            Scale(**json.loads(args.worker_scale)),
            json.loads(args.worker_inputs),
            args.worker_out,
        )
        return

    scale = SCALES["smoke" if args.smoke else args.scale]
    if args.rounds:
        scale = replace(scale, rounds=args.rounds)
    if args.threads is not None:
        scale = replace(scale, threads=args.threads)
    if args.attention:
        scale = replace(scale, attention=args.attention)
    report = Report("train_step", smoke=args.smoke, settings={"scale": asdict(scale), "lora": LORA})
    print(report.header())
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="kubetune-bench-train-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        summary = run(scale, args.contenders, workdir, args.timeout, in_process=args.smoke)
    print(table(summary))
    if summary["ratios"]:
        print("ratios: " + ", ".join(f"{k} {v}" for k, v in summary["ratios"].items()))
    default = None if args.smoke else RESULTS / f"train-step-{scale.name}.json"
    report.finish(summary, args.json or default)


if __name__ == "__main__":
    main()
