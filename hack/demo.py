"""`make demo`: kubetune end to end on this machine, through a real S3, in a few minutes.

1. starts an S3 server (SeaweedFS, from the dev dependencies) on loopback;
2. builds a tiny base model: a Llama of 2M parameters with a tokenizer trained on the
   Dolly sample (tests/data/dolly-sample.jsonl), briefly pretrained on its texts as
   plain text (a base model knows words, not the instruction format); uploads it to S3;
3. uploads the Dolly records with short answers to S3, keeping one back;
4. runs `kubetune train -f build/demo/tuningjob.yaml`: the same manifest a cluster
   would run (QLoRA: 4-bit NF4 base, LoRA on every linear layer; Alpaca template),
   from S3 to S3;
5. prints where the adapter is, the loss curve (text, and build/demo/loss.png), and
   the answers to the held-back prompt before and after training.

A model this small learns the answer format (a short answer, then EOS), not facts:
expect the "after" answer to be shorter and to stop, not to be right.

    make demo                      # or: .venv/bin/python -m hack.demo --help
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.ground.s3 import SeaweedS3

ROOT = Path(__file__).resolve().parents[1]

DOLLY = ROOT / "tests" / "data" / "dolly-sample.jsonl"
MODEL_PREFIX = "models/tiny-llama/"
DATA_KEY = "datasets/dolly/train.jsonl"
OUTPUT = "runs/dolly-tiny/"
BUCKET = "kubetune-demo"


def quiet_libraries() -> None:
    from kubetune.trainer.quantization import quiet_bitsandbytes_import

    quiet_bitsandbytes_import()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()


def show(path: Path) -> str:
    """A path as the user can type it: relative to the current folder where it is inside it."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def say(text: str) -> None:
    print(f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text, flush=True)


def pick_records(seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, str]]:
    """All Dolly texts (the base model's "pretraining corpus"), the records with short
    responses (what kubetune trains on: a tiny model sees where answers end), and one
    short-answer record held back from both."""
    records = [json.loads(line) for line in DOLLY.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(records)
    short = [
        r
        for r in records
        if len(r["response"]) < 200 and len(r["instruction"]) + len(r["context"]) < 400
    ]
    held_out = next(r for r in short if not r["context"] and len(r["response"]) > 40)
    return (
        [r for r in records if r is not held_out],
        [r for r in short if r is not held_out],
        held_out,
    )


def manifest(endpoint: dict[str, str], steps: int, learning_rate: float) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "metadata": {"name": "dolly-tiny"},
        "spec": {
            "model": {"source": f"s3://{BUCKET}/{MODEL_PREFIX}"},
            # A base model has no chat template (and no trained chat tokens): the Alpaca
            # format ends answers with EOS, a token it knows from pretraining.
            "dataset": {
                "source": f"s3://{BUCKET}/{DATA_KEY}",
                "format": "dolly",
                "template": "alpaca",
                "validation": {"fraction": 0.05},
            },
            "method": {"type": "qlora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05}},
            "training": {
                "maxSteps": steps,
                "learningRate": learning_rate,
                "warmupRatio": 0.05,
                "batchSize": 2,
                "gradientAccumulation": 2,
                "maxSeqLength": 512,
                "evalEvery": max(steps // 6, 1),
                "checkpointEvery": max(steps // 3, 1),
                "logEvery": max(steps // 30, 1),
            },
            "output": {"destination": f"s3://{BUCKET}/{OUTPUT}"},
            "s3": endpoint,
            "resources": {"gpus": 0},
        },
    }


def text_chart(
    points: list[tuple[int, float]],
    marks: list[tuple[int, float]],
    width: int = 64,
    height: int = 12,
) -> str:
    """An ASCII chart of the training loss (·) with validation losses (o)."""
    every = points + marks
    low, high = min(v for _, v in every), max(v for _, v in every)
    last = max(s for s, _ in every)
    grid = [[" "] * width for _ in range(height)]

    def place(step: int, value: float, char: str) -> None:
        x = min(int(step / max(last, 1) * (width - 1)), width - 1)
        y = min(int((high - value) / max(high - low, 1e-9) * (height - 1)), height - 1)
        grid[y][x] = char

    for step, value in points:
        place(step, value, "·")
    for step, value in marks:
        place(step, value, "o")
    lines = []
    for i, row in enumerate(grid):
        label = high - (high - low) * i / (height - 1)
        lines.append(f"  {label:6.2f} |{''.join(row)}")
    lines.append("         +" + "-" * width)
    lines.append(f"          step 0{' ' * (width - 12 - len(str(last)))}step {last}")
    lines.append("          · training loss   o validation loss")
    return "\n".join(lines)


def plot(points: list[tuple[int, float]], marks: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot([s for s, _ in points], [v for _, v in points], label="training loss")
    axes.plot([s for s, _ in marks], [v for _, v in marks], "o-", label="validation loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss per trained token")
    axes.set_title("kubetune demo: tiny Llama, QLoRA on Dolly")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def build_model(folder: Path, records: list[dict[str, str]], args: argparse.Namespace) -> Path:
    """A tiny base model: random weights, then a short pretraining on Dolly's texts as plain text.

    The pretraining (full weights, next-token loss, no chat template) stands in for
    what makes a base model a base model: it knows the words. kubetune then teaches it
    the instruction format with QLoRA, as it would a real base model.
    """
    import torch

    from tests.support.tiny import build_model as random_model
    from tests.support.tiny import build_tokenizer

    texts = [" ".join((r["instruction"], r["context"], r["response"])) for r in records]
    tokenizer = build_tokenizer(texts, vocab_size=args.vocab, chat_template=None)
    model = random_model(tokenizer, "llama", hidden_size=args.hidden, layers=args.layers)
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    length, batch = 256, 8
    chunks = [ids[i : i + length] for i in range(0, len(ids) - length, length)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    steps = args.pretrain_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 10) * max(0.1, 1 - s / steps)
    )
    rng = random.Random(0)
    model.train()
    for _ in range(steps):
        rows = torch.tensor([chunks[rng.randrange(len(chunks))] for _ in range(batch)])
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    print(
        f"      pretrained on {len(ids)} tokens of plain text for {steps} steps: loss {loss.item():.2f}"
    )
    # Generation stops at EOS or at ChatML's end of turn, as build_model configures it.
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def answer(model_folder: Path, adapter: Path | None, tokenizer_folder: Path, prompt: str) -> str:
    """The model's greedy answer, and whether it ended its turn by itself."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer.model import peft_without_deprecation_noise
    from kubetune.trainer.quantization import four_bit_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    # The 4-bit base the adapter was trained on (QLoRA adapters are served on it).
    model = AutoModelForCausalLM.from_pretrained(
        model_folder, quantization_config=four_bit_config(torch.float32), device_map={"": "cpu"}
    )
    if adapter is not None:
        from peft import PeftModel

        with peft_without_deprecation_noise():
            model = PeftModel.from_pretrained(model, adapter)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    limit = 60
    out = model.eval().generate(
        input_ids=torch.tensor([ids]),
        max_new_tokens=limit,
        do_sample=False,
        repetition_penalty=1.3,
        no_repeat_ngram_size=3,
    )
    new = out[0, len(ids) :].tolist()
    stops = set(model.generation_config.eos_token_id or [])
    text = tokenizer.decode(
        new[:-1] if new and new[-1] in stops else new, skip_special_tokens=True
    ).strip()
    if new and new[-1] in stops:
        ending = f"stopped with {tokenizer.convert_ids_to_tokens(new[-1])}"
    else:
        ending = f"did not stop within {limit} tokens"
    return f"{text or '(nothing)'}\n             [{len(new)} tokens, {ending}]"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=80, help="optimizer steps (default 80: about 5 epochs)"
    )
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / "build" / "demo",
        help="where everything goes (emptied first)",
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=250, help="the base model's plain-text pretraining"
    )
    parser.add_argument("--vocab", type=int, default=2048, help="the tokenizer's vocabulary size")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    started = time.monotonic()
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.environ.setdefault(
        "OMP_NUM_THREADS", "1"
    )  # a tiny model: threads only contend (docs/trainer.md)
    quiet_libraries()

    say("kubetune demo: QLoRA on a tiny Llama, data and results in S3, on CPU")
    server = SeaweedS3.start(workdir / "s3")
    try:
        assert server.endpoint is not None
        endpoint = server.endpoint
        say(f"[1/5] S3: SeaweedFS at {endpoint.url} (data in {workdir / 's3'})")
        client = endpoint.client()
        client.create_bucket(Bucket=BUCKET)

        corpus, train, held_out = pick_records(seed=0)
        model_folder = build_model(workdir / "model", corpus, args)
        for path in sorted(model_folder.iterdir()):
            client.upload_file(str(path), BUCKET, MODEL_PREFIX + path.name)
        say(
            f"[2/5] base model: tiny Llama (hidden {args.hidden}, {args.layers} layers), tokenizer ({args.vocab} tokens) "
            f"trained on the data -> s3://{BUCKET}/{MODEL_PREFIX}"
        )

        data = workdir / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in train))
        client.upload_file(str(data), BUCKET, DATA_KEY)
        say(
            f"[3/5] data: {len(train)} Dolly records with short answers -> s3://{BUCKET}/{DATA_KEY} (one more held back)"
        )

        job = workdir / "tuningjob.yaml"
        import yaml

        job.write_text(
            yaml.safe_dump(
                manifest(endpoint.spec(), args.steps, args.learning_rate), sort_keys=False
            )
        )
        say(f"[4/5] kubetune train -f {show(job)}")
        env = {**os.environ, **endpoint.env(), "KUBETUNE_SCRATCH_DIR": str(workdir / "scratch")}
        code = subprocess.run(
            [sys.executable, "-m", "kubetune", "train", "-f", str(job), "--metrics-port", "0"],
            env=env,
        ).returncode
        if code != 0:
            say(f"kubetune train exited with {code}")
            return code

        adapter = workdir / "adapter"
        adapter.mkdir()
        for item in client.list_objects_v2(Bucket=BUCKET, Prefix=OUTPUT + "adapter/")["Contents"]:
            client.download_file(BUCKET, item["Key"], str(adapter / item["Key"].rsplit("/", 1)[-1]))
        records = [
            json.loads(line)
            for line in client.get_object(Bucket=BUCKET, Key=OUTPUT + "metrics.jsonl")["Body"]
            .read()
            .decode()
            .splitlines()
        ]
        summary = json.loads((adapter / "training-summary.json").read_text())
    finally:
        server.stop()

    points = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    marks = [(r["step"], r["eval_loss"]) for r in records if r["kind"] == "eval"]
    png = workdir / "loss.png"
    plot(points, marks, png)
    (workdir / "loss.txt").write_text(text_chart(points, marks) + "\n")
    metrics = summary["metrics"]
    say(
        f"[5/5] adapter: s3://{BUCKET}/{OUTPUT}adapter/ (copied to {show(adapter)}: {', '.join(sorted(p.name for p in adapter.iterdir()))})"
    )
    print(f"\nloss curve ({show(png)}, {show(workdir / 'loss.txt')}):\n")
    print(text_chart(points, marks))
    print(
        f"\nvalidation loss {metrics['eval_loss_initial']:.2f} -> {metrics['eval_loss']:.2f} "
        f"(perplexity {metrics['eval_perplexity']:.1f}) in {summary['steps']} steps, "
        f"{metrics.get('tokens_per_second', 0):.0f} tokens/s"
    )

    prompt = held_out["instruction"]
    print(f"\nheld-back prompt: {prompt}")
    print(f"  reference: {held_out['response'][:300]}")
    print(f"  before:    {answer(workdir / 'model', None, adapter, prompt)}")
    print(f"  after:     {answer(workdir / 'model', adapter, adapter, prompt)}")
    say(f"\ndone in {time.monotonic() - started:.0f} s; everything is in {show(workdir)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
