"""Finding and reading data files: local paths and S3, four file formats.

`list_files(uri)` turns a source (one file, a folder or an `s3://bucket/prefix/`) into
`SourceFile`s, each with a fingerprint (a SHA-256 of a local file's bytes, an S3
object's ETag) so that the prepared data can be cached by what went in without
downloading anything. `read_records(file)` yields each record as (where, dict), or a
`RecordProblem` saying where and why a record could not be read.

Formats by extension: JSON Lines (`.jsonl`, `.ndjson`), JSON (`.json`: an array of
objects, or JSON Lines despite the name, as many published datasets are), Parquet
(`.parquet`), CSV (`.csv`, header row first); `.gz` on any of the text formats.
Under a folder or prefix, files with other extensions are ignored and listed in the
report (a `_SUCCESS` marker, a README).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubetune.trainer.data.problems import RecordProblem
from kubetune.trainer.errors import BadDataError, StorageAccessError

DATA_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}

# Parquet is read in batches of this many rows, to bound memory on big files.
PARQUET_BATCH = 4096


@dataclass(frozen=True)
class SourceFile:
    """A data file to read."""

    uri: str  # as it appears in messages and the report: a local path or s3://bucket/key
    path: Path | None  # where its bytes are locally; None until an S3 object is downloaded
    size: int
    fingerprint: str  # "sha256:..." for local files, "etag:..." for S3 objects

    @property
    def kind(self) -> str:
        return file_kind(self.uri)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


def file_kind(name: str) -> str:
    """jsonl, json, parquet or csv, from the name; empty when it is not a data file."""
    lowered = name.lower()
    if lowered.endswith(".gz"):
        lowered = lowered[:-3]
        if lowered.endswith(".parquet"):
            return ""  # Parquet compresses internally; a gzipped Parquet file is a mistake
    return next((kind for suffix, kind in DATA_SUFFIXES.items() if lowered.endswith(suffix)), "")


def list_local(source: str) -> tuple[list[SourceFile], list[str]]:
    """The data files at a local path (a file, or every data file under a folder), and the ignored ones."""
    path = Path(source).expanduser()
    if path.is_file():
        if not file_kind(path.name):
            raise BadDataError(
                f"{source}: unknown file type; use .jsonl, .jsonl.gz, .json, .parquet or .csv (named by its extension)"
            )
        return [_local_file(path)], []
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        data = [p for p in files if file_kind(p.name)]
        if not data:
            raise BadDataError(
                f"{source}: no data files in this folder (.jsonl, .jsonl.gz, .json, .parquet, .csv)"
            )
        return [_local_file(p) for p in data], [str(p) for p in files if not file_kind(p.name)]
    raise StorageAccessError(f"{source}: no such file or folder")


def _local_file(path: Path) -> SourceFile:
    try:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except PermissionError:
        raise StorageAccessError(f"{path}: permission denied") from None
    return SourceFile(
        uri=str(path), path=path, size=path.stat().st_size, fingerprint=f"sha256:{digest}"
    )


def read_records(file: SourceFile) -> Iterator[tuple[str, dict] | RecordProblem]:
    """Every record in `file` in order, as (where, record), or a RecordProblem where one cannot be read.

    Raises BadDataError when the file as a whole cannot be read (empty, not UTF-8
    where that cannot be narrowed to a record, not Parquet, no CSV header).
    """
    assert file.path is not None, "download S3 objects before reading them"
    if file.size == 0:
        raise BadDataError(f"{file.uri}: the file is empty; remove it or put records in it")
    kind = file.kind
    if kind == "parquet":
        yield from _read_parquet(file)
        return
    raw = _read_bytes(file)
    if not raw.strip():
        raise BadDataError(
            f"{file.uri}: the file holds only whitespace; remove it or put records in it"
        )
    if kind == "json" and raw.lstrip()[:1] == b"[":
        yield from _read_json_array(file, raw)
    elif kind in ("json", "jsonl"):
        yield from _read_jsonl(file, raw)
    else:
        yield from _read_csv(file, raw)


def _read_bytes(file: SourceFile) -> bytes:
    assert file.path is not None
    data = file.path.read_bytes()
    if file.uri.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise BadDataError(
                f"{file.uri}: not a valid gzip file ({e}); compress it with gzip or drop the .gz"
            ) from None
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
        data = data[3:]
    return data


def _read_jsonl(file: SourceFile, raw: bytes) -> Iterator[tuple[str, dict] | RecordProblem]:
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{file.uri}:{number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield RecordProblem(
                where,
                "not-utf8",
                f"bytes that are not UTF-8 at column {e.start + 1}; re-encode the file as UTF-8",
            )
            continue
        try:
            record = json.loads(text)
        except ValueError as e:
            yield RecordProblem(
                where, "invalid-json", f"invalid JSON ({e}); each line must be one JSON object"
            )
            continue
        if not isinstance(record, dict):
            yield RecordProblem(
                where, "not-an-object", f"expected a JSON object, got {_json_type(record)}"
            )
            continue
        yield where, record


def _read_json_array(file: SourceFile, raw: bytes) -> Iterator[tuple[str, dict] | RecordProblem]:
    text = _decode_whole(file, raw)
    try:
        records = json.loads(text)
    except ValueError as e:
        line = getattr(e, "lineno", None)
        where = f"{file.uri}:{line}" if line else file.uri
        raise BadDataError(
            f"{where}: invalid JSON ({e}); a .json file must hold one array of objects, or JSON Lines"
        ) from None
    if not isinstance(records, list):
        raise BadDataError(
            f"{file.uri}: expected a JSON array of objects, got {_json_type(records)}"
        )
    if not records:
        raise BadDataError(
            f"{file.uri}: the JSON array is empty; remove the file or put records in it"
        )
    for index, record in enumerate(records):
        if isinstance(record, dict):
            yield f"{file.uri} [{index}]", record
        else:
            yield RecordProblem(
                f"{file.uri} [{index}]",
                "not-an-object",
                f"expected a JSON object, got {_json_type(record)}",
            )


def _read_csv(file: SourceFile, raw: bytes) -> Iterator[tuple[str, dict] | RecordProblem]:
    text = _decode_whole(file, raw)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as e:
        raise BadDataError(f"{file.uri}:1: unreadable CSV header ({e})") from None
    if not any(h.strip() for h in header):
        raise BadDataError(f"{file.uri}:1: the first row must name the columns")
    line = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield RecordProblem(
                f"{file.uri}:{line + 1}", "invalid-csv", f"unreadable CSV row ({e})"
            )
            return  # the reader cannot resynchronise after a broken quote
        where = f"{file.uri}:{line + 1}"
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            yield RecordProblem(
                where,
                "ragged-row",
                f"{len(row)} fields where the header names {len(header)}; quote fields that contain commas or newlines",
            )
            continue
        yield where, dict(zip(header, row, strict=True))


def _read_parquet(file: SourceFile) -> Iterator[tuple[str, dict] | RecordProblem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file.path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BadDataError(f"{file.uri}: not a readable Parquet file ({e})") from None
    if parquet.metadata.num_rows == 0:
        raise BadDataError(
            f"{file.uri}: the Parquet file has no rows; remove it or put records in it"
        )
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH):
        for record in batch.to_pylist():
            yield f"{file.uri} row {row}", record
            row += 1


def _decode_whole(file: SourceFile, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise BadDataError(
            f"{file.uri}:{line}: bytes that are not UTF-8 (byte {e.start}); re-encode the file as UTF-8"
        ) from None


def _json_type(value: object) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }.get(type(value), "null" if value is None else type(value).__name__)
