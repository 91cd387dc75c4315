"""Benchmark: S3 throughput of kubetune's storage layer against plain boto3, side by side.

    .venv/bin/python -m bench.s3_transfer [--repeat 7] [--json out.json]    # make bench-s3
    .venv/bin/python -m bench.s3_transfer --smoke                          # seconds, small files

One SeaweedFS server (`weed mini`, tests/ground/s3.py) on loopback serves every
contender, on the same files, in the same run. Shapes, as the trainer moves them:

- model: download a prefix like a Hugging Face model folder: 2 x 256 MiB
  `model-0000N-of-00002.safetensors`, a 2 MiB `tokenizer.json` and small JSON files.
  kubetune: `Storage.download_prefix` (lists, downloads, records its cache manifest).
- dataset: download one 100 MiB JSONL object. kubetune: `Storage.download_file`.
- checkpoint: upload a folder like a LoRA checkpoint of an 8B Llama (r 16 on every
  linear layer: 42M adapter parameters): a 160 MiB `adapter_model.safetensors`, an
  80 MiB `optimizer.pt` (8-bit AdamW state) and small files. kubetune:
  `Storage.upload_dir`.

Contenders: kubetune's `Storage` as the trainer creates it, and boto3's
TransferManager driven directly (one manager per batch, every file of the batch
submitted to it, listing included for the model prefix) under several
`TransferConfig`s: the defaults (8 MiB parts, 10 threads, downloads read and
written 256 KiB at a time), fewer and more threads, bigger parts, bigger io chunks.
Each boto3 client keeps as many pooled connections as it has threads, plus 4.
Both sides use botocore's default checksums (CRC32 on uploads, validated on downloads).

Two phases per shape, after one untimed round that warms the server and connections.
Sweep: every contender `--sweep-repeat` times, to find boto3's best configuration on
this machine. Final: kubetune, that configuration and boto3's defaults, `--repeat`
times more, measured afresh (the winner of a noisy sweep is flattered by its own
noise). Each round runs every contender once, in a rotated order, so that load from
other work on the machine falls on all of them alike. Reported: median and range of
MiB/s, kubetune's median over the best boto3 configuration's (the goal: within 10%),
and the CPU seconds per GiB of the client (this process) and of the server: on a
shared machine the CPU a client burns is a steadier figure than its wall-clock rate.
Files live in a temporary folder; each download goes to a fresh folder, removed (and
each upload deleted from the bucket) outside the timed region; every transfer is
checked to have moved every file whole.

The modules: `shapes` (the files each shape moves, in full and smoke sizes),
`contenders` (kubetune's Storage and boto3's TransferManager under each configuration),
`harness` (the server, the timed and checked transfers, the sweep and final rounds),
`report` (the figures per shape and contender, kubetune's ratios, the tables) and
`__main__` (the command line).
"""
