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
import itertools
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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

MiB = 1 << 20


@dataclass(frozen=True)
class ReadLimits:
    """What one text data file may hold; over a limit the file is refused (BadDataError, exit 65).

    Documented in docs/data.md. They bound the reader's memory whatever the file holds:
    lines are read one at a time, never the whole file.
    """

    line_bytes: int = 64 * MiB  # one JSON Lines line or one CSV line
    file_bytes: int = 16 * 1024 * MiB  # one file, after decompression
    json_array_bytes: int = 1024 * MiB  # a .json array is parsed whole
    # Text and JSON gzip 3-20 times; deflate's ceiling is about 1030, which is what a
    # bomb reaches. Beyond this ratio (decompressed/compressed so far) a .gz is refused...
    gzip_ratio: int = 200
    ratio_checked_after: int = 64 * MiB  # ...once this much has been decompressed


LIMITS = ReadLimits()

# A CSV field may hold this many characters: the csv module's own limit, kept (and
# documented) rather than raised, since long text belongs in JSON Lines or Parquet.
CSV_FIELD_CHARS = csv.field_size_limit()


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


def read_records(
    file: SourceFile, limits: ReadLimits = LIMITS
) -> Iterator[tuple[str, dict] | RecordProblem]:
    """Every record in `file` in order, as (where, record), or a RecordProblem where one cannot be read.

    Text files are streamed (and gunzipped) a line at a time under `limits`, so a
    gzip bomb, a multi-GB line or a huge file ends in a BadDataError naming the file
    and line instead of an out-of-memory kill. Raises BadDataError when the file as a
    whole cannot be read (empty, not UTF-8 where that cannot be narrowed to a record,
    not Parquet, no CSV header, over a limit).
    """
    assert file.path is not None, "download S3 objects before reading them"
    if file.size == 0:
        raise BadDataError(f"{file.uri}: the file is empty; remove it or put records in it")
    kind = file.kind
    if kind == "parquet":
        yield from _read_parquet(file)
        return
    with _open_capped(file, limits) as stream:
        lines = _lines(file, stream, limits)
        first = next((line for line in lines if line[1].strip()), None)  # leading blanks skipped
        if first is None:
            raise BadDataError(
                f"{file.uri}: the file holds only whitespace; remove it or put records in it"
            )
        lines = itertools.chain([first], lines)
        if kind == "json" and first[1].lstrip()[:1] == b"[":
            yield from _read_json_array(file, b"".join(line for _, line in lines), limits)
        elif kind in ("json", "jsonl"):
            yield from _read_jsonl(file, lines)
        else:
            yield from _read_csv(file, lines)


class _CappedReader(io.RawIOBase):
    """A binary stream that refuses to yield more than `limits.file_bytes` (decompressed).

    For a gzipped file it also refuses a decompression ratio no real dataset has (a
    gzip bomb), checked once enough has been read for the ratio to mean something.
    """

    def __init__(
        self, file: SourceFile, inner: BinaryIO, limits: ReadLimits, compressed: BinaryIO | None
    ):
        self.file, self.inner, self.limits = file, inner, limits
        self.compressed = compressed  # the .gz file under `inner`, to measure the ratio
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        try:
            data = self.inner.read(len(buffer))
        except (OSError, EOFError, zlib.error) as e:
            raise BadDataError(
                f"{self.file.uri}: not a valid gzip file ({e}); compress it with gzip or drop the .gz"
            ) from None
        self.total += len(data)
        if self.total > self.limits.file_bytes:
            raise BadDataError(
                f"{self.file.uri}: more than {_size(self.limits.file_bytes)} of data in one file"
                f"{' (decompressed)' if self.compressed else ''}; split it into several files"
            )
        if self.compressed is not None and self.total > self.limits.ratio_checked_after:
            consumed = max(self.compressed.tell(), 1)
            if self.total > self.limits.gzip_ratio * consumed:
                raise BadDataError(
                    f"{self.file.uri}: {_size(consumed)} decompressed to {_size(self.total)}, more"
                    f" than {self.limits.gzip_ratio} times as much: refused as a gzip bomb; real"
                    " text compresses far less, so check what this file is"
                )
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        if self.compressed is not None:
            self.compressed.close()  # GzipFile leaves the file it was given open
        super().close()


def _open_capped(file: SourceFile, limits: ReadLimits) -> io.BufferedReader:
    assert file.path is not None
    raw: BinaryIO = file.path.open("rb")
    if not file.uri.lower().endswith(".gz"):
        return io.BufferedReader(_CappedReader(file, raw, limits, None), buffer_size=MiB)
    unzipped = gzip.GzipFile(fileobj=raw, mode="rb")
    return io.BufferedReader(_CappedReader(file, unzipped, limits, raw), buffer_size=MiB)  # type: ignore[arg-type]


def _lines(
    file: SourceFile, stream: io.BufferedReader, limits: ReadLimits
) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) for each line, each at most `limits.line_bytes`."""
    number = 0
    while True:
        line = stream.readline(limits.line_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > limits.line_bytes:
            raise BadDataError(
                f"{file.uri}:{number}: a line longer than {_size(limits.line_bytes)}; one record"
                " (a JSON Lines line, a CSV row) may hold at most that: split the record, or check"
                " that the file has newlines"
            )
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
            line = line[3:]
        yield number, line


def _read_jsonl(
    file: SourceFile, lines: Iterator[tuple[int, bytes]]
) -> Iterator[tuple[str, dict] | RecordProblem]:
    for number, line in lines:
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


def _read_json_array(
    file: SourceFile, raw: bytes, limits: ReadLimits
) -> Iterator[tuple[str, dict] | RecordProblem]:
    if len(raw) > limits.json_array_bytes:
        raise BadDataError(
            f"{file.uri}: a JSON array of {_size(len(raw))} is parsed whole, and at most"
            f" {_size(limits.json_array_bytes)} is read that way; write it as JSON Lines"
            " (one object per line) instead"
        )
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


def _read_csv(
    file: SourceFile, lines: Iterator[tuple[int, bytes]]
) -> Iterator[tuple[str, dict] | RecordProblem]:
    # The numbers come from _lines (leading blank lines were skipped before the csv
    # module saw any); a quoted field may span several lines.
    current = [0]

    def text_lines() -> Iterator[str]:
        for number, line in lines:
            current[0] = number
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadDataError(
                    f"{file.uri}:{number}: bytes that are not UTF-8 (column {e.start + 1});"
                    " re-encode the file as UTF-8"
                ) from None

    reader = csv.reader(text_lines())
    try:
        header = next(reader)
    except csv.Error as e:
        raise BadDataError(f"{file.uri}:1: unreadable CSV header ({e})") from None
    if not any(h.strip() for h in header):
        raise BadDataError(f"{file.uri}:1: the first row must name the columns")
    while True:
        start = current[0] + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            # The reader cannot resynchronise after a broken quote or an oversized field,
            # so the rest of the file would be lost: the whole file is refused, never
            # silently cut short (not even under onInvalid: skip).
            if "field larger than field limit" in str(e):
                raise BadDataError(
                    f"{file.uri}:{start}: a CSV field longer than {_size(CSV_FIELD_CHARS)}"
                    f" (by line {current[0]}); CSV fields may hold at most that: store long"
                    " text as JSON Lines or Parquet"
                ) from None
            raise BadDataError(
                f"{file.uri}:{start}: unreadable CSV row ({e}); the rest of the file cannot be"
                " read past it: fix the quoting (lines end in \\n or \\r\\n)"
            ) from None
        where = f"{file.uri}:{start}"
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


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def _json_type(value: object) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }.get(type(value), "null" if value is None else type(value).__name__)
