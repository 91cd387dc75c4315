"""Benchmark: kubetune's data pipeline against TRL's, side by side in one run.

    .venv/bin/python -m bench.data_pipeline [--repeat 3] [--json results.json]
    .venv/bin/python -m bench.data_pipeline --smoke     # 200 Dolly records at 2048, once

Data: the Dolly sample in tests/data (1,088 records), and a synthetic set of 15,000
records with Dolly's length distribution (Dolly records drawn with replacement, the
words of each field shuffled so that no two texts are alike). Tokenizer: the real
Mistral 7B SentencePiece tokenizer (mistral-common) with the built-in `mistral`
chat template.

For each data set and maxSeqLength (2048, 4096):

- kubetune, end to end: format -> template -> tokenize with response masks ->
  bin-pack -> Arrow rows (`Encoder`, `plan_packs`, `build_packs`).
- TRL, end to end: what SFTTrainer does with a conversational dataset:
  `apply_chat_template` per example in `datasets.map` (no response mask: the
  template has no generation markers), then `pack_dataset(strategy="bfd")`.
- Packing alone, on the same tokenized examples: kubetune's `plan_packs` +
  `build_packs` against TRL's `pack_dataset` (best-fit decreasing per map batch).

Reported: examples/s and tokens/s (best of --repeat runs), packs against the lower
bound ceil(tokens / maxSeqLength), packing efficiency (tokens / (packs x
maxSeqLength)) and kubetune/TRL ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, Report
from kubetune.trainer.data.encode import Encoder
from kubetune.trainer.data.formats import Formatter
from kubetune.trainer.data.packing import build_packs, lower_bound, plan_packs
from kubetune.trainer.data.templates import BUILTIN, resolve_template
from tests.support.tokenizers import mistral_tokenizer

ROOT = Path(__file__).resolve().parents[1]

DOLLY = ROOT / "tests" / "data" / "dolly-sample.jsonl"
LENGTHS = (2048, 4096)
SYNTHETIC = 15_000


def dolly_records() -> list[dict]:
    return [json.loads(line) for line in DOLLY.read_text().splitlines()]


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """n records drawn from Dolly, each field's words shuffled: Dolly's lengths, new texts."""
    rng = random.Random(seed)
    source = dolly_records()
    out = []
    for _ in range(n):
        record = dict(rng.choice(source))
        for field in ("instruction", "context", "response"):
            words = record[field].split(" ")
            rng.shuffle(words)
            record[field] = " ".join(words)
        out.append(record)
    return out


def best_of(repeat: int, fn, *args):
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def kubetune_end_to_end(records, tokenizer, template, capacity):
    formatter = Formatter("dolly")
    examples = [formatter(f"r{i}", r) for i, r in enumerate(records)]
    encoded = Encoder(tokenizer, template, "responses", capacity, "truncate").encode(examples)
    lengths = [len(x) for x in encoded.input_ids]
    packs = plan_packs(lengths, capacity)
    table = build_packs(encoded.input_ids, encoded.labels, packs)
    return encoded, table


def kubetune_pack(encoded, capacity):
    lengths = [len(x) for x in encoded.input_ids]
    return build_packs(encoded.input_ids, encoded.labels, plan_packs(lengths, capacity))


def trl_end_to_end(records, tokenizer, capacity):
    import datasets
    from trl import pack_dataset

    formatter = Formatter("dolly")
    conversations = [{"messages": formatter(f"r{i}", r).messages} for i, r in enumerate(records)]
    dataset = datasets.Dataset.from_list(conversations)

    def tokenize(example):
        ids = tokenizer.apply_chat_template(example["messages"], tokenize=True, return_dict=True)[
            "input_ids"
        ]
        return {"input_ids": ids}

    tokenized = dataset.map(
        tokenize, remove_columns=["messages"], load_from_cache_file=False, keep_in_memory=True
    )
    return pack_dataset(
        tokenized,
        capacity,
        strategy="bfd",
        map_kwargs={"load_from_cache_file": False, "keep_in_memory": True},
    )


def trl_pack(encoded, capacity):
    import datasets
    from trl import pack_dataset

    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": [x.tolist() for x in encoded.input_ids],
            "labels": [y.tolist() for y in encoded.labels],
        }
    )
    start = time.perf_counter()
    packed = pack_dataset(
        dataset,
        capacity,
        strategy="bfd",
        map_kwargs={"load_from_cache_file": False, "keep_in_memory": True},
    )
    return time.perf_counter() - start, packed


def run(repeat: int, smoke: bool = False) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    tokenizer = mistral_tokenizer()
    tokenizer.chat_template = BUILTIN["mistral"]  # so that TRL's path renders the same text
    template = resolve_template("mistral", tokenizer)
    rows = []
    data = (
        [("dolly-sample-200", dolly_records()[:200])]
        if smoke
        else [("dolly-sample", dolly_records())]
    )
    if not smoke:
        data.append(("synthetic-15k", synthetic_records(SYNTHETIC)))
    for name, records in data:
        for capacity in LENGTHS[:1] if smoke else LENGTHS:
            ours_s, (encoded, table) = best_of(
                repeat, kubetune_end_to_end, records, tokenizer, template, capacity
            )
            trl_s, trl_packed = best_of(repeat, trl_end_to_end, records, tokenizer, capacity)
            tokens = int(sum(len(x) for x in encoded.input_ids))
            bound = lower_bound([len(x) for x in encoded.input_ids], capacity)
            ours_pack_s, _ = best_of(repeat, kubetune_pack, encoded, capacity)
            trl_pack_s = min(trl_pack(encoded, capacity)[0] for _ in range(repeat))
            _, trl_same = trl_pack(encoded, capacity)
            trl_tokens = int(sum(len(x) for x in trl_packed["input_ids"]))
            row = {
                "data": name,
                "maxSeqLength": capacity,
                "examples": len(records),
                "tokens": tokens,
                "fewestPossiblePacks": bound,
                "kubetune": {
                    "packs": table.num_rows,
                    "efficiency": round(tokens / (table.num_rows * capacity), 4),
                    "endToEndSeconds": round(ours_s, 3),
                    "examplesPerSecond": round(len(records) / ours_s),
                    "tokensPerSecond": round(tokens / ours_s),
                    "packSeconds": round(ours_pack_s, 4),
                },
                "trl": {
                    "packsSameTokens": len(trl_same),
                    "efficiencySameTokens": round(tokens / (len(trl_same) * capacity), 4),
                    "endToEndSeconds": round(trl_s, 3),
                    "examplesPerSecond": round(len(records) / trl_s),
                    "tokensPerSecond": round(trl_tokens / trl_s),
                    "packSeconds": round(trl_pack_s, 4),
                },
            }
            row["ratios"] = {
                "endToEndSpeedup": round(trl_s / ours_s, 2),
                "packSpeedup": round(trl_pack_s / ours_pack_s, 2),
                "packsSaved": len(trl_same) - table.num_rows,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| data | maxSeqLength | examples | tokens | fewest possible packs | kubetune packs (eff.) | TRL packs (eff.) "
        "| kubetune ex/s (tok/s) | TRL ex/s (tok/s) | end-to-end speedup | packing alone: kubetune / TRL s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        k, t, x = r["kubetune"], r["trl"], r["ratios"]
        lines.append(
            f"| {r['data']} | {r['maxSeqLength']} | {r['examples']:,} | {r['tokens']:,} | {r['fewestPossiblePacks']} "
            f"| {k['packs']} ({k['efficiency']:.2%}) | {t['packsSameTokens']} ({t['efficiencySameTokens']:.2%}) "
            f"| {k['examplesPerSecond']:,} ({k['tokensPerSecond']:,}) | {t['examplesPerSecond']:,} ({t['tokensPerSecond']:,}) "
            f"| {x['endToEndSpeedup']}x | {k['packSeconds']} / {t['packSeconds']} ({x['packSpeedup']}x) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement; the best is kept"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="200 Dolly records at 2048 tokens, once"
    )
    parser.add_argument(
        "--json", type=Path, help="the JSON report (default bench/results/data-pipeline.json)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.repeat = 1
    report = Report("data_pipeline", smoke=args.smoke, settings={"repeat": args.repeat})
    print(report.header())
    rows = run(args.repeat, args.smoke)
    print(table(rows))
    report.finish(rows, args.json or (None if args.smoke else RESULTS / "data-pipeline.json"))


if __name__ == "__main__":
    np.set_printoptions(linewidth=200)
    main()
