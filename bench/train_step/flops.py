"""What a training step computes and what the hardware could: parameters and model FLOPs
per token from the Llama shape alone, the GPUs' datasheet peaks, and a dense matmul
measured on this machine (bench/train_step; the formula is in its docstring)."""

from __future__ import annotations

import math
import time

from bench.train_step.scales import Scale


def parameter_counts(scale: Scale, lora_r: int) -> dict[str, int]:
    """Weights in matmuls (base and adapters) and in total, from the Llama shape alone."""
    d, head = scale.hidden, scale.hidden // scale.heads
    q_out, kv_out = scale.heads * head, scale.kv_heads * head
    linears = [  # (in, out) of every linear layer of one decoder block
        (d, q_out),
        (d, kv_out),
        (d, kv_out),
        (q_out, d),
        (d, scale.intermediate),
        (d, scale.intermediate),
        (scale.intermediate, d),
    ]
    per_layer = sum(i * o for i, o in linears)
    lora_per_layer = sum(lora_r * (i + o) for i, o in linears)
    lm_head = d * scale.vocab
    return {
        "base_matmul": scale.layers * per_layer + lm_head,
        "lora": scale.layers * lora_per_layer,
        "total": scale.layers * (per_layer + 2 * d) + 2 * lm_head + d,  # + norms, embeddings
    }


def flops_per_token(scale: Scale, lora_r: int, attended: float) -> float:
    counts = parameter_counts(scale, lora_r)
    attention = 12 * scale.layers * scale.hidden * attended  # n_heads * d_head == hidden
    return 4 * counts["base_matmul"] + 6 * counts["lora"] + attention


# Dense bf16 tensor-core peaks (no sparsity), from NVIDIA's datasheets.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100 80GB HBM3": 989e12,  # H100 SXM
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
}


def gpu_peak(name: str) -> float | None:
    for key, peak in GPU_PEAK_BF16.items():
        if all(part in name for part in key.split()):
            return peak
    return None


def matmul_ceiling(gpu: bool, seconds: float = 3.0) -> float:
    """FLOP/s of a dense square matmul in the compute dtype: what this machine attains now."""
    import torch

    n = 4096 if gpu else 1024
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if gpu:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best
