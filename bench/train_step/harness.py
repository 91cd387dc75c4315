"""The train-step benchmark's harness: each contender measured in a fresh process, the
rounds in rotated order, the summary (best and median rates, memory, model FLOP/s, MFU
or the share of a measured matmul, kubetune's ratios) and its table (bench/train_step)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import ROOT, markdown_table
from bench.train_step.clock import StepClock
from bench.train_step.contenders import LABELS, RUNNERS
from bench.train_step.flops import flops_per_token, gpu_peak, matmul_ceiling, parameter_counts
from bench.train_step.inputs import LORA, build_inputs, quiet
from bench.train_step.scales import Scale


def worker(contender: str, scale: Scale, inputs: dict[str, Any], out: Path) -> None:
    """One contender in this (fresh) process; writes its figures to `out`."""
    logging.basicConfig(level=logging.WARNING)
    out.write_text(json.dumps(measure(contender, scale, inputs)))


def measure(contender: str, scale: Scale, inputs: dict[str, Any]) -> dict[str, Any]:
    import torch

    quiet()
    with contextlib.suppress(ImportError):  # kubetune's trainer: silences a warning on CPU
        from kubetune.trainer.quantization import quiet_bitsandbytes_import

        quiet_bitsandbytes_import()
    if scale.threads:
        torch.set_num_threads(scale.threads)
    clock = StepClock(scale.warmup, scale.steps, cuda=scale.gpu)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-{contender}-") as tmp:
            step_tokens = RUNNERS[contender](scale, inputs, Path(tmp), clock)
    finally:
        clock.handle.remove()
    result = clock.result(step_tokens)
    result["wallSeconds"] = time.perf_counter() - started
    result["torchThreads"] = torch.get_num_threads()
    return result


def run_worker(
    contender: str, scale: Scale, inputs: dict[str, Any], workdir: Path, timeout: float
) -> dict[str, Any]:
    """`measure` in a new process: a clean peak-memory figure and no state shared with others."""
    out = workdir / f"result-{contender}.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "bench.train_step",
        "--worker",
        contender,
        "--worker-scale",
        json.dumps(asdict(scale)),
        "--worker-inputs",
        json.dumps(inputs),
        "--worker-out",
        str(out),
    ]
    # Compiled bytecode kept between workers (where PYTHONDONTWRITEBYTECODE is set, each
    # worker would compile every module it imports again).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )

    if done.returncode != 0:
        raise RuntimeError(f"{contender} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def run(
    scale: Scale, contenders: list[str], workdir: Path, timeout: float, *, in_process: bool
) -> dict[str, Any]:
    """`in_process`: every contender in this process, one after the other (the smoke mode:
    it checks that each side runs, in seconds; its memory figures mean little)."""
    inputs = build_inputs(scale, workdir)
    print(
        f"# {scale.name}: Llama {parameter_counts(scale, LORA['r'])['total'] / 1e6:.1f}M parameters, "
        f"{inputs['exampleCount']} examples ({inputs['tokens']:,} tokens, "
        f"{inputs['meanExampleTokens']:.0f} per example on average), seq {scale.seq}",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for round_ in range(scale.rounds):
        shift = round_ % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            if in_process:
                result = measure(contender, scale, inputs)
            else:
                result = run_worker(contender, scale, inputs, workdir, timeout)
            result["loadAverage"] = [round(x, 2) for x in os.getloadavg()]
            runs[contender].append(result)
            print(
                f"  round {round_ + 1} {contender}: {result['tokensPerSecond']:.0f} tokens/s, "
                f"peak {result['peakMemoryBytes'] / 2**20:.0f} MiB, load {result['loadAverage'][0]}",
                flush=True,
            )
    import torch

    if scale.threads:
        torch.set_num_threads(scale.threads)  # the workers' setting
    ceiling = matmul_ceiling(scale.gpu)
    return summarize(scale, inputs, runs, ceiling)


def summarize(
    scale: Scale, inputs: dict[str, Any], runs: dict[str, list[dict[str, Any]]], ceiling: float
) -> dict[str, Any]:
    import torch

    per_token = flops_per_token(scale, LORA["r"], inputs["attendedPositions"])
    peak = (
        gpu_peak(torch.cuda.get_device_name(0)) if scale.gpu and torch.cuda.is_available() else None
    )
    contenders: dict[str, Any] = {}
    for name, results in runs.items():
        # Best of the rounds: other work on a shared machine only ever slows a run down,
        # so the fastest round is the closest to what the code itself costs. Medians too.
        rates = [r["tokensPerSecond"] for r in results]
        cpu_rates = [r["tokensPerCpuSecond"] or 0.0 for r in results]
        memory = statistics.median(r["peakMemoryBytes"] for r in results)
        achieved = per_token * max(rates)
        contenders[name] = {
            "label": LABELS[name],
            "tokensPerSecond": round(max(rates), 1),
            "tokensPerSecondMedian": round(statistics.median(rates), 1),
            "tokensPerSecondRuns": [round(x, 1) for x in rates],
            "tokensPerCpuSecond": round(max(cpu_rates), 1),
            "tokensPerCpuSecondMedian": round(statistics.median(cpu_rates), 1),
            "peakMemoryMiB": round(memory / 2**20, 1),
            "achievedTflops": round(achieved / 1e12, 4),
            "fractionOfMatmulCeiling": round(achieved / ceiling, 4),
            "mfu": round(achieved / peak, 4) if peak else None,
            "paddingShare": (
                round(statistics.median(r["paddingShare"] for r in results), 4)
                if results[0]["paddingShare"] is not None
                else None
            ),
            "runs": results,
        }
    ratios = {}
    ours = contenders.get("kubetune")
    for other in ("trl", "hf"):
        theirs = contenders.get(other)
        if ours is None or theirs is None:
            continue
        key = f"kubetuneTo{other.upper()}"
        for figure in (
            "tokensPerSecond",
            "tokensPerSecondMedian",
            "tokensPerCpuSecond",
            "tokensPerCpuSecondMedian",
        ):
            ratios[key + figure[0].upper() + figure[1:]] = round(ours[figure] / theirs[figure], 3)
        ratios[key + "PeakMemory"] = round(ours["peakMemoryMiB"] / theirs["peakMemoryMiB"], 3)
    counts = parameter_counts(scale, LORA["r"])
    return {
        "scale": asdict(scale),
        "data": {k: v for k, v in inputs.items() if k not in ("model", "examples")},
        "parameters": counts,
        "flopsPerToken": per_token,
        "flopsFormula": "4*N_base + 6*N_lora + 12*L*hidden*c",
        "matmulCeilingTflops": round(ceiling / 1e12, 4),
        "peakTflops": peak / 1e12 if peak else None,
        "contenders": contenders,
        "ratios": ratios,
    }


def table(summary: dict[str, Any]) -> str:
    gpu = summary["peakTflops"] is not None
    ours = summary["contenders"].get("kubetune")
    rows = []
    for c in summary["contenders"].values():
        row = [
            c["label"],
            f"{c['tokensPerSecond']:,.0f} ({c['tokensPerSecondMedian']:,.0f})",
            f"{ours['tokensPerSecond'] / c['tokensPerSecond']:.2f}x" if ours else "-",
        ]
        if not gpu:
            row += [
                f"{c['tokensPerCpuSecond']:,.0f} ({c['tokensPerCpuSecondMedian']:,.0f})",
                f"{ours['tokensPerCpuSecond'] / c['tokensPerCpuSecond']:.2f}x" if ours else "-",
            ]
        padding = c["paddingShare"]
        row += [
            f"{c['peakMemoryMiB']:,.0f}",
            "-" if padding is None else f"{padding:.0%}",
            f"{c['achievedTflops'] * 1e3:,.1f}",
            f"{c['mfu']:.1%}" if gpu else f"{c['fractionOfMatmulCeiling']:.1%}",
        ]
        rows.append(row)
    headers = ["contender", "tokens/s, best (median)", "kubetune is"]
    if not gpu:
        headers += ["tokens per CPU-second, best (median)", "kubetune is"]
    headers += [
        "peak GPU memory allocated (MiB)" if gpu else "peak RSS (MiB)",
        "padding",
        "model GFLOP/s (best)",
        "MFU" if gpu else "of a measured fp32 matmul",
    ]
    return markdown_table(headers, rows)
