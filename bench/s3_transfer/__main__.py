"""`python -m bench.s3_transfer`: the command line (bench/s3_transfer/__init__.py says what
it measures and how)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import bench.s3_transfer
from bench.common import RESULTS, Report
from bench.s3_transfer.harness import run
from bench.s3_transfer.report import sweep_table, table
from bench.s3_transfer.shapes import shapes


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.s3_transfer",
        description=(bench.s3_transfer.__doc__ or "").splitlines()[0],
    )
    parser.add_argument(
        "--repeat", type=int, default=7, help="final rounds: kubetune against boto3's best"
    )
    parser.add_argument(
        "--sweep-repeat", type=int, default=3, help="rounds of every boto3 configuration"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="small files, one boto3 configuration, one run"
    )
    parser.add_argument(
        "--shapes", nargs="*", choices=["model", "dataset", "checkpoint"], help="only these"
    )
    parser.add_argument("--workdir", type=Path, help="where to put the files and the server's data")
    parser.add_argument(
        "--json", type=Path, help="write the JSON report here (default bench/results/s3.json)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every run")
    args = parser.parse_args()
    if args.smoke:
        args.repeat = args.sweep_repeat = 1
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    report = Report(
        "s3_transfer",
        smoke=args.smoke,
        settings={
            "repeat": args.repeat,
            "sweepRepeat": args.sweep_repeat,
            "shapes": [s.__dict__ for s in shapes(args.smoke)],
        },
    )
    print(report.header())
    results = run(args)
    print("Sweep (every configuration):")
    print(sweep_table(results))
    print("Final (kubetune against the sweep's best boto3 configuration, measured afresh):")
    print(table(results))
    report.finish(results, args.json or (None if args.smoke else RESULTS / "s3.json"))


if __name__ == "__main__":
    main()
