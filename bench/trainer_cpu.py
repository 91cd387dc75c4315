"""Trainer figures on CPU, side by side in one run (no GPU was available to measure on).

1. Base precision: the same small Llama trained with LoRA (r 16, all linear layers,
   activation checkpointing, one packed row of --tokens tokens per step) on base
   weights in NF4 (qlora), int8, bf16 and fp32: model memory and step time, as ratios
   to fp32. Memory ratios carry over to GPUs; CPU step times do not (CPU has no fused
   4-bit or int8 training kernels: both dequantize every step).
2. kubetune's loop against transformers' Trainer: the same model (NF4 base), packed
   rows and steps; tokens per second of each, to show the own loop costs nothing.
3. Methods: the same model and rows trained with QLoRA, LoRA, DoRA, rsLoRA, prompt
   tuning (20 virtual tokens) and full fine-tuning (all fp32): trainable parameters,
   model memory, gradient and AdamW-state memory (measured from the tensors after the
   steps), their sum, and step time, as ratios to LoRA fp32.
4. 4-bit generation on CPU: bitsandbytes' default (eval-mode layers repacked for its
   fused AVX512-BF16 kernel) against kubetune's setting (repacking off, see
   trainer/quantization.py): greedy tokens per second, what the correctness fix costs.

    .venv/bin/python -m bench.trainer_cpu            # add --quick for a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune.trainer.quantization import quiet_bitsandbytes_import

quiet_bitsandbytes_import()

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from kubetune.api.v1alpha1 import LoraSpec, TrainingSpec, TuningJobSpec  # noqa: E402
from kubetune.trainer.distributed import Dist  # noqa: E402
from kubetune.trainer.loop import StopSignal, TrainLoop  # noqa: E402
from kubetune.trainer.model import load_model  # noqa: E402
from kubetune.trainer.plan import Hardware, make_plan  # noqa: E402
from kubetune.trainer.sampling import Schedule  # noqa: E402
from kubetune.trainer.state import TrainState  # noqa: E402


def build_base(folder: Path, hidden: int, layers: int, vocab: int) -> Path:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(hidden // 128, 1),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    return folder


def packed_rows(
    count: int, tokens: int, vocab: int, examples_per_row: int = 4
) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    per = tokens // examples_per_row
    for _ in range(count):
        ids = torch.randint(3, vocab, (per * examples_per_row,), generator=generator).tolist()
        labels = [
            (-100 if i % per < per // 2 else t) for i, t in enumerate(ids)
        ]  # responses: second halves
        positions = [i % per for i in range(len(ids))]
        rows.append(
            {
                "input_ids": ids,
                "labels": labels,
                "position_ids": positions,
                "seq_lengths": [per] * examples_per_row,
            }
        )
    return rows


def collate(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
    return {
        k: torch.tensor([[x for r in rows for x in r[k]]])
        for k in ("input_ids", "labels", "position_ids")
    }


def padded_collate(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
    """The packed rows' tokens as one unpacked row (prompt tuning prepends to every row)."""
    batch = collate(rows)
    del batch["position_ids"]
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    return batch


def spec_for(method: dict[str, Any]) -> TuningJobSpec:
    return TuningJobSpec.model_validate(
        {
            "model": {"source": "m"},
            "dataset": {"source": "d"},
            "output": {"destination": "o/"},
            "resources": {"gpus": 0},
            "method": method,
            "training": {"packing": method.get("type") != "prompt-tuning"},
        }
    )


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def train_method(
    folder: Path, method: dict[str, Any], rows: list[dict[str, list[int]]], warmup: int
) -> dict[str, Any]:
    """Train `method` for len(rows) steps: memory by part, and the median step time."""
    spec = spec_for(method)
    plan = make_plan(spec, Hardware.probe())
    model = load_model(folder, "m", plan, spec.method, torch.device("cpu"), seed=0)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    loop = TrainLoop(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        scaler=None,
        plan=plan,
        training=TrainingSpec(batch_size=1, gradient_accumulation=1, max_steps=len(rows)),
        train_split=rows,
        collate=padded_collate if spec.method.type == "prompt-tuning" else collate,
        schedule=Schedule(len(rows), 1, 1, 1),
        total_steps=len(rows),
        dist=Dist.single(),
        device=torch.device("cpu"),
        stop=StopSignal(),
        progress=TrainState(),
    )
    reports = list(loop.steps())
    result = {
        "trainable_parameters": sum(p.numel() for p in parameters),
        "model_bytes": memory_bytes(model),
        # Gradients exist during each step, one per trainable parameter, in its dtype.
        "gradient_bytes": tensor_bytes(parameters),
        "optimizer_bytes": tensor_bytes(
            t for state in optimizer.state.values() for t in state.values()
        ),
        "step_seconds": statistics.median(r.seconds for r in reports[warmup:]),
        "tokens": reports[0].input_tokens,
    }
    result["training_bytes"] = (
        result["model_bytes"] + result["gradient_bytes"] + result["optimizer_bytes"]
    )
    del model, optimizer, loop
    gc.collect()
    return result


METHODS = {
    "qlora (nf4)": {"type": "qlora"},
    "lora int8": {"type": "lora", "baseWeights": "int8"},
    "lora bf16": {"type": "lora", "baseWeights": "bf16", "computeDtype": "bf16"},
    "lora fp32": {"type": "lora", "baseWeights": "fp32"},
}
LORA = LoraSpec(r=16, alpha=32, dropout=0.0)
_LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TRAINED = {
    "qlora": {"type": "qlora", "lora": _LORA},
    "lora fp32": {"type": "lora", "baseWeights": "fp32", "lora": _LORA},
    "dora fp32": {"type": "lora", "baseWeights": "fp32", "lora": {**_LORA, "useDora": True}},
    "rslora fp32": {"type": "lora", "baseWeights": "fp32", "lora": {**_LORA, "useRslora": True}},
    "prompt-tuning fp32": {
        "type": "prompt-tuning",
        "baseWeights": "fp32",
        "promptTuning": {"virtualTokens": 20},
    },
    "full fp32": {"type": "full", "baseWeights": "fp32"},
}


def memory_bytes(model: torch.nn.Module) -> int:
    return int(model.get_memory_footprint())


def time_our_loop(
    folder: Path, method: dict[str, Any], rows: list[dict[str, list[int]]], warmup: int
) -> tuple[int, list[float], int]:
    plan = make_plan(spec_for(method), Hardware.probe())
    model = load_model(folder, "m", plan, LORA, torch.device("cpu"), seed=0)
    memory = memory_bytes(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loop = TrainLoop(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        scaler=None,
        plan=plan,
        training=TrainingSpec(batch_size=1, gradient_accumulation=1, max_steps=len(rows)),
        train_split=rows,
        collate=collate,
        schedule=Schedule(len(rows), 1, 1, 1),
        total_steps=len(rows),
        dist=Dist.single(),
        device=torch.device("cpu"),
        stop=StopSignal(),
        progress=TrainState(),
    )
    reports = list(loop.steps())
    del model, optimizer, loop
    gc.collect()
    return memory, [r.seconds for r in reports[warmup:]], reports[0].input_tokens


def time_hf_trainer(
    folder: Path, rows: list[dict[str, list[int]]], warmup: int, workdir: Path
) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    plan = make_plan(spec_for({"type": "qlora"}), Hardware.probe())
    model = load_model(folder, "m", plan, LORA, torch.device("cpu"), seed=0)
    seconds: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seconds.append(time.perf_counter() - self.started)

    def hf_collate(features: list[dict[str, list[int]]]) -> dict[str, Any]:
        return collate(features)

    args = TrainingArguments(
        output_dir=str(workdir / "hf"),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        max_steps=len(rows),
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=hf_collate,
        callbacks=[StepTimer()],
    )
    trainer.train()
    del model, trainer
    gc.collect()
    return seconds[warmup:]


def generation_speed(folder: Path, repack: bool, new_tokens: int) -> float:
    from kubetune.trainer.quantization import disable_cpu_inference_repacking, four_bit_config

    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=four_bit_config(torch.float32), device_map={"": "cpu"}
    )
    if not repack:
        disable_cpu_inference_repacking(model)
    model.eval()
    prompt = torch.randint(3, 1000, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.generate(
            prompt, max_new_tokens=4, do_sample=False, min_new_tokens=4
        )  # warm up (and repack)
        started = time.perf_counter()
        model.generate(
            prompt, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens
        )
        elapsed = time.perf_counter() - started
    return new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument(
        "--tokens", type=int, default=512, help="tokens per packed row (one row per step)"
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model and 3 steps: checks the script runs"
    )
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.vocab, args.tokens, args.steps = 128, 2, 2000, 256, 3
    torch.set_num_threads(args.threads)
    warmup = 1 if args.steps > 2 else 0

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = build_base(workdir / "base", args.hidden, args.layers, args.vocab)
        rows = packed_rows(args.steps, args.tokens, args.vocab)
        params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())
        print(
            f"model: Llama, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: {params / 1e6:.1f}M parameters; "
            f"{args.tokens} tokens per step, {args.threads} threads, torch {torch.__version__}\n"
        )

        results: dict[str, Any] = {}
        for name, method in METHODS.items():
            memory, seconds, tokens = time_our_loop(folder, method, rows, warmup)
            results[name] = {
                "memory_bytes": memory,
                "step_seconds": statistics.median(seconds),
                "tokens": tokens,
            }
        reference = results["lora fp32"]
        print(
            "| base weights | model memory (MiB) | vs fp32 | step (s) | tokens/s | step time vs fp32 |"
        )
        print("|---|---|---|---|---|---|")
        for name, r in results.items():
            print(
                f"| {name} | {r['memory_bytes'] / 2**20:.1f} | {r['memory_bytes'] / reference['memory_bytes']:.2f}x "
                f"| {r['step_seconds']:.3f} | {r['tokens'] / r['step_seconds']:.0f} | {r['step_seconds'] / reference['step_seconds']:.2f}x |"
            )

        methods = {name: train_method(folder, m, rows, warmup) for name, m in TRAINED.items()}
        base = methods["lora fp32"]
        print(
            "\n| method | trainable params | model (MiB) | grads + AdamW (MiB) | training total (MiB) "
            "| vs lora fp32 | step (s) | step vs lora fp32 |"
        )
        print("|---|---|---|---|---|---|---|---|")
        mib = 2**20
        for name, r in methods.items():
            print(
                f"| {name} | {r['trainable_parameters']:,} | {r['model_bytes'] / mib:.1f} "
                f"| {(r['gradient_bytes'] + r['optimizer_bytes']) / mib:.1f} "
                f"| {r['training_bytes'] / mib:.1f} | {r['training_bytes'] / base['training_bytes']:.2f}x "
                f"| {r['step_seconds']:.3f} | {r['step_seconds'] / base['step_seconds']:.2f}x |"
            )

        hf = statistics.median(time_hf_trainer(folder, rows, warmup, workdir))
        ours = results["qlora (nf4)"]["step_seconds"]
        print("\n| loop (qlora, same rows) | step (s) | tokens/s |")
        print("|---|---|---|")
        print(f"| kubetune | {ours:.3f} | {args.tokens / ours:.0f} |")
        print(f"| transformers Trainer | {hf:.3f} | {args.tokens / hf:.0f} |")
        print(f"kubetune / Trainer tokens/s: {hf / ours:.2f}x")

        new_tokens = 16 if args.quick else 48
        repacked = generation_speed(folder, repack=True, new_tokens=new_tokens)
        plain = generation_speed(folder, repack=False, new_tokens=new_tokens)
        print("\n| 4-bit greedy generation on CPU | tokens/s |")
        print("|---|---|")
        print(f"| bitsandbytes default (repacked, fused CPU kernel) | {repacked:.1f} |")
        print(f"| kubetune (repacking off: dequantize + matmul) | {plain:.1f} |")
        print(f"kubetune / default: {plain / repacked:.2f}x")
        summary = {
            "results": results,
            "methods": methods,
            "hf_trainer_step_seconds": hf,
            "generation_tokens_per_second": {"repacked": repacked, "plain": plain},
        }
        print("\n" + json.dumps(summary, default=float))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
