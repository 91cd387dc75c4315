"""`prepare()`: a TuningJob's dataset, read, formatted, split, redacted, tokenized and packed.

The trainer calls `prepare(job, workdir, tokenizer)` and gets a `PreparedData`: the
train/validation/test splits as `datasets.Dataset`s of packed rows (`input_ids`,
`labels` with -100 where not trained, `position_ids` restarting per example,
`seq_lengths`) and the report. `kubetune prepare` calls the same and saves the
splits as Parquet with the report as JSON.

The result is cached under `workdir/prepared/<key>/`, the key a hash of everything
that decides it: the data files' fingerprints (SHA-256 of local files, ETags of S3
objects, listed without downloading), the tokenizer (vocabulary, special tokens,
chat template), the dataset settings and the training settings that shape the data
(maxSeqLength, packing, lossOn, overlong, seed). A resumed or restarted run with
the same inputs loads the cache and does not tokenize again. A cache entry is
written to a temporary folder and renamed into place when complete, so a run killed
half-way never leaves a partial entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kubetune import __version__
from kubetune.api.contract import PREPARED_ENV
from kubetune.api.locations import local_path, location_kind
from kubetune.api.v1alpha1 import DatasetSpec, TrainingSpec, TuningJob
from kubetune.trainer.batch import IGNORE_INDEX
from kubetune.trainer.data.encode import Encoded, Encoder
from kubetune.trainer.data.formats import Example, Formatter, detect_format
from kubetune.trainer.data.packing import build_packs, lower_bound, plan_packs
from kubetune.trainer.data.problems import ProblemLog, RecordProblem
from kubetune.trainer.data.redact import Redactor
from kubetune.trainer.data.remote import download_remote, list_remote, pvc_path
from kubetune.trainer.data.sources import SourceFile, file_kind, list_local, read_records
from kubetune.trainer.data.splits import split_indices
from kubetune.trainer.data.templates import ChatTemplate, resolve_template
from kubetune.trainer.errors import BadDataError, InvalidConfigError
from kubetune.trainer.logs import terminal_progress
from kubetune.trainer.storage import Storage

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Bump when a change to the pipeline changes its output for the same inputs.
PIPELINE_VERSION = 2  # 2: the small-data rules (no validation fraction, no packing to few rows)
SPLITS = ("train", "validation", "test")
REPORT_FILE = "prepare-report.json"
COMPLETE_MARKER = "COMPLETE"
# S3 objects downloaded at once (each also in parallel parts, by the storage layer).
DOWNLOAD_THREADS = 4
# Examples tokenized per call: bounds memory, and the fast tokenizer parallelises within a call.
ENCODE_CHUNK = 4096


@dataclass
class PreparedData:
    """What `prepare` returns to the trainer."""

    train: datasets.Dataset
    validation: datasets.Dataset | None
    test: datasets.Dataset | None
    report: dict[str, Any]  # as written to prepare-report.json
    chat_template: str | None  # the template used; save it with the adapter's tokenizer
    directory: Path  # the cache entry holding <split>.parquet and the report
    from_cache: bool

    @property
    def packing_efficiency(self) -> float | None:
        """Tokens / (packs x maxSeqLength) of the train split; None without packing."""
        return self.report.get("packingEfficiency")

    def save(self, output: Path, report_path: Path | None = None) -> list[Path]:
        """Copy the Parquet splits and the report to `output` (the report to `report_path` if given)."""
        output.mkdir(parents=True, exist_ok=True)
        written = []
        for split in SPLITS:
            source = self.directory / f"{split}.parquet"
            if source.exists():
                written.append(Path(shutil.copyfile(source, output / source.name)))
        report_path = report_path or output / REPORT_FILE
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(self.report, indent=2) + "\n")
        return [*written, report_path]


def prepare(
    job: TuningJob,
    workdir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    storage: Storage | None = None,
) -> PreparedData:
    """Prepare the job's dataset with `tokenizer`, or load it from the cache under `workdir`.

    `storage` reads the sources; the trainer passes its own so that the bytes downloaded
    here count in its S3 metrics. Default: a Storage for `spec.s3`.
    """
    spec = job.spec
    dataset, training = spec.dataset, spec.training
    stages = _Stages()
    storage = storage or Storage(spec.s3)
    with stages("list"):
        sources = {"train": _list_source(dataset.source, storage)}
        for split in ("validation", "test"):
            held = getattr(dataset, split)
            if held is not None and held.source is not None:
                sources[split] = _list_source(held.source, storage)
    template = resolve_template(dataset.template, tokenizer) if _needs_template(dataset) else None
    ignored = [name for _, skipped in sources.values() for name in skipped]
    files = {split: found for split, (found, _) in sources.items()}
    key = cache_key(files, tokenizer, template, dataset, training)
    entry = Path(workdir) / "prepared" / key[:32]
    if (entry / COMPLETE_MARKER).exists():
        log.info("prepared data found in the cache (%s): not tokenizing again", entry)
        return _load(entry, from_cache=True)
    published = os.environ.get(PREPARED_ENV)
    if published and fetch_published(published, key, entry, storage):
        return _load(entry, from_cache=True)

    problems = ProblemLog(dataset.on_invalid)
    report: dict[str, Any] = {
        "kubetuneVersion": __version__,
        "cacheKey": key,
        "files": [],
        "ignoredFiles": ignored,
    }
    with (
        stages("read"),
        tempfile.TemporaryDirectory(prefix="downloads-", dir=_ensure(workdir)) as downloads,
    ):
        examples = {
            split: _read_examples(
                _download(found, storage, Path(downloads)), dataset, problems, report, split
            )
            for split, found in files.items()
        }
    beyond_max = 0
    if dataset.max_examples is not None:
        beyond_max = max(len(examples["train"]) - dataset.max_examples, 0)
        examples["train"] = examples["train"][: dataset.max_examples]
    report["examples"] = {"beyondMaxExamples": beyond_max}
    notes: list[str] = []
    dataset = _small_data_validation(len(examples["train"]), dataset, training, notes)
    with stages("split"):
        examples = _split(examples, dataset, training.seed)
    redactor = Redactor(dataset.redact)
    if redactor:
        with stages("redact"):
            for split_examples in examples.values():
                for example in split_examples:
                    _redact(example, redactor)
    encoder = Encoder(
        tokenizer, template, training.loss_on, training.max_seq_length, training.overlong
    )
    encoded: dict[str, Encoded] = {}
    with stages("encode"):
        for split, split_examples in examples.items():
            encoded[split] = _encode(encoder, split_examples, split)
            for problem in encoded[split].problems:
                problems.add(problem)
    problems.check()
    if not encoded["train"].input_ids:
        raise BadDataError(_empty_message(dataset.source, report, problems, encoded["train"]))

    tables: dict[str, pa.Table] = {}
    split_reports: dict[str, Any] = {}
    training = _small_data_packing(encoded["train"], training, notes)
    report["choices"] = notes
    for note in notes:
        log.warning("%s", note)
    with stages("pack"):
        for split, enc in encoded.items():
            if not enc.input_ids:
                continue
            tables[split], split_reports[split] = _rows(enc, training, shuffle=split == "train")
    if not any(
        e.messages is not None for split_examples in examples.values() for e in split_examples
    ):
        template = None  # plain text throughout: no template was used
    report.update(
        _summary(
            report, problems, encoded, split_reports, redactor, template, dataset, training, stages
        )
    )
    with stages("write"):
        _write(entry, tables, report, stages)
    return _load(entry, from_cache=False)


# -- small data (the rules: kubetune/trainer/auto.py)


def _small_data_validation(
    examples: int, dataset: DatasetSpec, training: TrainingSpec, notes: list[str]
) -> DatasetSpec:
    """No validation fraction held out of fewer than SMALL_DATA examples (unless needed)."""
    from kubetune.trainer.auto import SMALL_DATA

    held = dataset.validation
    if held is None or held.fraction is None or examples >= SMALL_DATA:
        return dataset
    if training.early_stopping is not None or training.export_best:
        notes.append(
            f"small data: {examples} training examples, and the validation fraction "
            f"{held.fraction:g} is held out anyway because earlyStopping/exportBest compare "
            "validation losses"
        )
        return dataset
    notes.append(
        f"small data: {examples} training examples (fewer than {SMALL_DATA}), so no validation "
        f"split was held out (dataset.validation.fraction {held.fraction:g} would leave "
        f"{round(examples * held.fraction)} rows to measure noise on, and each row counts for "
        "training); give dataset.validation.source to evaluate on a separate file"
    )
    return dataset.model_copy(update={"validation": None})


def _small_data_packing(train: Encoded, training: TrainingSpec, notes: list[str]) -> TrainingSpec:
    """No packing when it would leave fewer than MIN_PACKED_ROWS training rows."""
    from kubetune.trainer.auto import MIN_PACKED_ROWS

    if not training.packing:
        return training
    lengths = [len(x) for x in train.input_ids]
    packs = len(plan_packs(lengths, training.max_seq_length))
    if packs >= MIN_PACKED_ROWS or packs >= len(lengths):
        return training
    notes.append(
        f"small data: not packed (one example per row, still padding-free): packing "
        f"{len(lengths)} examples into {training.max_seq_length}-token rows would leave {packs} "
        f"rows, fewer than {MIN_PACKED_ROWS}, too few optimizer steps an epoch"
    )
    return training.model_copy(update={"packing": False})


# -- steps


def _list_source(uri: str, storage: Storage) -> tuple[list[SourceFile], list[str]]:
    """The data files of a source, fingerprinted, and the files ignored under it."""
    kind = location_kind(uri)
    if kind == "local":
        return list_local(local_path(uri))
    if kind == "pvc":
        return list_local(str(pvc_path(uri)))
    if kind == "hf":
        raise InvalidConfigError(
            f"{uri}: hf:// is for models; give a dataset as s3://, pvc://, https:// (or another "
            "fsspec URL) or a local path"
        )
    if kind == "unsupported":  # https:// and other fsspec protocols
        return list_remote(uri)
    objects = storage.resolve(uri)  # StorageAccessError: no bucket, no key, denied, bad credentials
    data = [o for o in objects if file_kind(o.uri)]
    if not data:
        if len(objects) == 1 and objects[0].uri == uri:
            raise BadDataError(
                f"{uri}: unknown file type; use .jsonl, .jsonl.gz, .json, .parquet or .csv"
            )
        raise BadDataError(
            f"{uri}: no data files under this prefix (.jsonl, .jsonl.gz, .json, .parquet, .csv)"
        )
    files = [
        SourceFile(uri=o.uri, path=None, size=o.size, fingerprint=f"etag:{o.etag}") for o in data
    ]
    return files, [o.uri for o in objects if not file_kind(o.uri)]


def _download(files: list[SourceFile], storage: Storage, folder: Path) -> list[SourceFile]:
    """S3 objects to local files under `folder`, several at a time; local files as they are."""
    remote = [f for f in files if f.path is None]
    if not remote:
        return files
    targets = {f.uri: folder / f"{i:05d}-{f.name}" for i, f in enumerate(remote)}

    def fetch(f: SourceFile) -> None:
        if location_kind(f.uri) == "s3":
            storage.download_file(f.uri, targets[f.uri])
        else:  # https:// and other fsspec URLs
            download_remote(f, targets[f.uri])

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        list(pool.map(fetch, remote))
    return [f if f.path is not None else replace(f, path=targets[f.uri]) for f in files]


def _needs_template(dataset: DatasetSpec) -> bool:
    return dataset.format != "text"


def _read_examples(
    files: list[SourceFile],
    dataset: DatasetSpec,
    problems: ProblemLog,
    report: dict[str, Any],
    split: str,
) -> list[Example]:
    examples: list[Example] = []
    for file in files:
        formatter: Formatter | None = None
        records = 0
        for item in read_records(file):
            records += 1
            if isinstance(item, RecordProblem):
                problems.add(item)
                continue
            where, record = item
            if formatter is None:
                fmt: str = dataset.format
                if fmt == "auto":
                    fmt = detect_format(Formatter("text", dataset.columns).rename(record), where)
                formatter = Formatter(
                    fmt, dataset.columns, dataset.system_prompt, dataset.stratify_by
                )
            result = formatter(where, record)
            if isinstance(result, RecordProblem):
                problems.add(result)
            else:
                examples.append(result)
        report["files"].append(
            {
                "uri": file.uri,
                "split": split,
                "bytes": file.size,
                "fingerprint": file.fingerprint,
                "records": records,
                "format": formatter.format if formatter else None,
            }
        )
    return examples


def _split(
    examples: dict[str, list[Example]], dataset: DatasetSpec, seed: int
) -> dict[str, list[Example]]:
    fractions = {
        split: held.fraction
        for split in ("validation", "test")
        if (held := getattr(dataset, split)) is not None and held.fraction is not None
    }
    train = examples["train"]
    out: dict[str, list[Example]] = {
        split: examples[split] for split in ("validation", "test") if split in examples
    }
    if fractions:
        if sum(fractions.values()) >= 1:
            raise InvalidConfigError(
                "dataset.validation.fraction + dataset.test.fraction must be less than 1"
            )
        chosen = split_indices([e.group for e in train], fractions, seed)
        for split in fractions:
            out[split] = [train[i] for i in chosen[split]]
        train = [train[i] for i in chosen["train"]]
    return {"train": train, **out}


def _redact(example: Example, redactor: Redactor) -> None:
    if example.messages is None:
        example.text = redactor(example.text or "")
    else:
        for message in example.messages:
            message["content"] = redactor(message["content"])


def _encode(encoder: Encoder, examples: list[Example], split: str = "train") -> Encoded:
    out = Encoded()
    with terminal_progress(len(examples), desc=f"tokenizing {split}", unit="ex") as bar:
        for start in range(0, len(examples), ENCODE_CHUNK):
            chunk = examples[start : start + ENCODE_CHUNK]
            # Plain texts and conversations tokenize differently; a chunk holds one kind.
            for plain in (True, False):
                part = [e for e in chunk if (e.messages is None) == plain]
                if part:
                    out.extend(encoder.encode(part))
            bar.update(len(chunk))
    return out


def _rows(enc: Encoded, training: TrainingSpec, shuffle: bool) -> tuple[pa.Table, dict[str, Any]]:
    lengths = [len(x) for x in enc.input_ids]
    capacity = training.max_seq_length
    if training.packing:
        packs = plan_packs(lengths, capacity)
    else:
        packs = [[i] for i in range(len(lengths))]
    if shuffle:  # BFD leaves long examples first; the trainer's sampler reshuffles every epoch
        order = np.random.default_rng(training.seed).permutation(len(packs))
        packs = [packs[i] for i in order]
    table = build_packs(enc.input_ids, enc.labels, packs)
    tokens = int(sum(lengths))
    trained = int(sum(int((y != IGNORE_INDEX).sum()) for y in enc.labels))
    split_report: dict[str, Any] = {
        "examples": len(lengths),
        "tokens": tokens,
        "trainedTokens": trained,
        "rows": len(packs),
        "exampleTokens": _stats(lengths),
        "trainedTokensPerExample": _stats([int((y != IGNORE_INDEX).sum()) for y in enc.labels]),
    }
    if training.packing:
        split_report.update(
            {
                "packs": len(packs),
                "fewestPossiblePacks": lower_bound(lengths, capacity),
                "packingEfficiency": round(tokens / (len(packs) * capacity), 6),
            }
        )
    return table, split_report


def _summary(
    report: dict[str, Any],
    problems: ProblemLog,
    encoded: dict[str, Encoded],
    split_reports: dict[str, Any],
    redactor: Redactor,
    template: ChatTemplate | None,
    dataset: DatasetSpec,
    training: TrainingSpec,
    stages: _Stages,
) -> dict[str, Any]:
    dropped: Counter[str] = Counter()
    for enc in encoded.values():
        dropped += enc.dropped
    invalid = Counter(problems.by_reason)
    records = sum(f["records"] for f in report["files"])
    kept = sum(len(enc.input_ids) for enc in encoded.values())
    train = split_reports.get("train", {})
    return {
        "template": template.name if template else None,
        "chatTemplate": template.source if template else None,
        "settings": {
            "maxSeqLength": training.max_seq_length,
            "packing": training.packing,
            "lossOn": training.loss_on,
            "overlong": training.overlong,
            "seed": training.seed,
            "onInvalid": dataset.on_invalid,
            "redact": list(dataset.redact),
        },
        "examples": {
            **report["examples"],
            "read": records,
            "kept": kept,
            "invalid": dict(sorted(invalid.items())),
            "dropped": dict(sorted(dropped.items())),
            "truncated": sum(enc.truncated for enc in encoded.values()),
            "eosAppended": sum(enc.eos_appended for enc in encoded.values()),
            "firstProblems": [str(p) for p in problems.first],
        },
        "redactions": {kind: redactor.counts.get(kind, 0) for kind in dataset.redact},
        "tokens": sum(s["tokens"] for s in split_reports.values()),
        "trainedTokens": sum(s["trainedTokens"] for s in split_reports.values()),
        "packs": train.get("packs", train.get("rows")),
        "packingEfficiency": train.get("packingEfficiency"),
        "splits": split_reports,
    }


def _write(
    entry: Path, tables: dict[str, pa.Table], report: dict[str, Any], stages: _Stages
) -> None:
    import pyarrow.parquet as pq

    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        for split, table in tables.items():
            pq.write_table(table, staging / f"{split}.parquet")
        report["seconds"] = stages.seconds()
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        (staging / COMPLETE_MARKER).write_text("")
        if entry.exists():  # an incomplete entry from an interrupted run (no marker)
            shutil.rmtree(entry)
        os.replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _load(entry: Path, from_cache: bool) -> PreparedData:
    import datasets
    import pyarrow.parquet as pq

    splits: dict[str, datasets.Dataset | None] = {}
    for split in SPLITS:
        path = entry / f"{split}.parquet"
        splits[split] = (
            datasets.Dataset(pq.read_table(path, memory_map=True)) if path.exists() else None
        )
    report = json.loads((entry / REPORT_FILE).read_text())
    template = report.get("chatTemplate")
    assert splits["train"] is not None
    return PreparedData(
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        report=report,
        chat_template=template,
        directory=entry,
        from_cache=from_cache,
    )


def published_uri(base: str, key: str) -> str:
    """Where the Validating step publishes the prepared data for cache key `key`."""
    return base.rstrip("/") + "/" + key[:32] + "/"


def publish(prepared: PreparedData, base: str, storage: Storage) -> str:
    """Upload a cache entry under `base` (the Validating step); the marker goes last, so a
    reader never takes a half-written entry for complete. Returns its URI."""
    uri = published_uri(base, prepared.report["cacheKey"])
    with tempfile.TemporaryDirectory(prefix="publish-") as folder:
        staging = Path(folder)
        for split in SPLITS:
            source = prepared.directory / f"{split}.parquet"
            if source.exists():
                shutil.copyfile(source, staging / source.name)
        shutil.copyfile(prepared.directory / REPORT_FILE, staging / REPORT_FILE)
        storage.upload_dir(staging, uri)
    storage.write_bytes(uri + COMPLETE_MARKER, b"")
    return uri


def fetch_published(base: str, key: str, entry: Path, storage: Storage) -> bool:
    """Take the Validating step's data for this cache key, if it published it complete.

    The key covers the data files, the tokenizer, the template and every setting that
    shapes the data, so data published for anything else is never taken (the trainer
    then prepares it again, and says so).
    """
    uri = published_uri(base, key)
    if not storage.exists(uri + COMPLETE_MARKER):
        log.warning(
            "no prepared data for this run's cache key at %s (the Validating step prepared "
            "it with another tokenizer or data): preparing it here",
            uri,
        )
        return False
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        storage.download_prefix(uri, staging)
        (staging / ".kubetune-cache.json").unlink(missing_ok=True)
        (staging / COMPLETE_MARKER).write_text("")
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("prepared data from the Validating step: %s (not tokenizing again)", uri)
    return True


def _ensure(folder: str | Path) -> Path:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- cache key


def cache_key(
    sources: dict[str, list[SourceFile]],
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate | None,
    dataset: DatasetSpec,
    training: TrainingSpec,
) -> str:
    """A SHA-256 over everything that decides the prepared data."""
    digest = hashlib.sha256()
    parts = {
        "pipeline": PIPELINE_VERSION,
        "files": {
            split: [(f.uri, f.size, f.fingerprint) for f in files]
            for split, files in sources.items()
        },
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": template.source if template else None,
        "dataset": dataset.model_dump(mode="json"),
        "training": training.model_dump(
            mode="json", include={"max_seq_length", "packing", "loss_on", "overlong", "seed"}
        ),
    }
    digest.update(json.dumps(parts, sort_keys=True).encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(
        (backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode()
    )
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()


# -- report helpers


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "min": int(array.min()),
        "max": int(array.max()),
        "mean": round(float(array.mean()), 1),
        "p50": int(np.percentile(array, 50)),
        "p90": int(np.percentile(array, 90)),
        "p99": int(np.percentile(array, 99)),
    }


def _empty_message(
    source: str, report: dict[str, Any], problems: ProblemLog, train: Encoded
) -> str:
    records = sum(f["records"] for f in report["files"])
    why = {**problems.by_reason, **train.dropped}
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(why.items())) or "none"
    hint = ""
    if train.dropped.get("overlong"):
        hint = "; raise training.maxSeqLength or set training.overlong: truncate"
    elif problems.count:
        hint = "; see the first problems:\n" + "\n".join(f"  {p}" for p in problems.first)
    return f"{source}: no training example left after filtering ({records} records read; dropped: {reasons}){hint}"


@dataclass
class _Stages:
    """Seconds spent per stage, for the report."""

    spent: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.spent[name] = round(self.spent.get(name, 0.0) + time.perf_counter() - begin, 4)

    def seconds(self) -> dict[str, float]:
        return {**self.spent, "total": round(time.perf_counter() - self.started, 4)}
