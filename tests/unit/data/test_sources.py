"""Reading data files: every format, and precise errors for the broken ones."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.trainer.data.problems import RecordProblem
from kubetune.trainer.data.sources import (
    CSV_FIELD_CHARS,
    ReadLimits,
    SourceFile,
    list_local,
    read_records,
)
from kubetune.trainer.errors import BadDataError, StorageAccessError

RECORDS = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]


def _read(path: Path) -> list:
    files, _ = list_local(str(path))
    return [item for f in files for item in read_records(f)]


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    "name, content",
    [
        ("d.jsonl", "".join(json.dumps(r) + "\n" for r in RECORDS)),
        ("d.json", json.dumps(RECORDS)),
        ("d.json", "".join(json.dumps(r) + "\n" for r in RECORDS)),  # JSON Lines named .json
        ("d.csv", "prompt,completion\na,b\nc,d\n"),
        ("d.jsonl.gz", gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS).encode())),
    ],
)
def test_text_formats_yield_records_with_their_place(tmp_path, name, content):
    items = _read(_write(tmp_path / name, content))
    assert [record for _, record in items] == RECORDS
    assert items[0][0].startswith(str(tmp_path / name))


def test_parquet_rows_are_numbered(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), path)
    items = _read(path)
    assert [r for _, r in items] == RECORDS
    assert items[1][0] == f"{path} row 1"


def test_jsonl_problems_name_the_line(tmp_path):
    path = _write(
        tmp_path / "d.jsonl",
        b'{"prompt": "a", "completion": "b"}\n{"prompt": \n[1, 2]\n{"text": "\xff"}\n',
    )
    items = _read(path)
    problems = [i for i in items if isinstance(i, RecordProblem)]
    assert [(p.where, p.reason) for p in problems] == [
        (f"{path}:2", "invalid-json"),
        (f"{path}:3", "not-an-object"),
        (f"{path}:4", "not-utf8"),
    ]


def test_ragged_csv_rows_are_problems_with_their_line(tmp_path):
    path = _write(tmp_path / "d.csv", 'prompt,completion\na,b\nc,d,e\n"x\ny",z\n')
    items = _read(path)
    assert (
        isinstance(items[1], RecordProblem)
        and items[1].where == f"{path}:3"
        and items[1].reason == "ragged-row"
    )
    assert items[2] == (
        f"{path}:4",
        {"prompt": "x\ny", "completion": "z"},
    )  # a quoted newline is one record


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("blank.jsonl", b"\n  \n", "only whitespace"),
        ("bad.json", b'[{"a": 1},', "invalid JSON"),
        ("latin1.csv", "prompt\ncaf\xe9\n".encode("latin-1"), ":2: bytes that are not UTF-8"),
        ("broken.parquet", b"not parquet", "not a readable Parquet file"),
        ("bad.jsonl.gz", b"not gzip", "not a valid gzip file"),
    ],
)
def test_unreadable_files_raise_bad_data_with_the_place(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(BadDataError, match=message) as error:
        _read(path)
    assert str(path) in str(error.value)


def test_scalar_json_lines_are_records_problems(tmp_path):
    # A .json file that is not an array is read as JSON Lines: a scalar line is not an object.
    items = _read(_write(tmp_path / "scalar.json", b'"text"\n'))
    assert isinstance(items[0], RecordProblem) and items[0].reason == "not-an-object"


def test_folders_read_data_files_and_list_the_rest(tmp_path):
    _write(tmp_path / "a.jsonl", json.dumps(RECORDS[0]) + "\n")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.csv", "prompt,completion\nc,d\n")
    _write(tmp_path / "_SUCCESS", "")
    files, ignored = list_local(str(tmp_path))
    assert [f.name for f in files] == ["a.jsonl", "b.csv"]
    assert ignored == [str(tmp_path / "_SUCCESS")]
    assert all(f.fingerprint.startswith("sha256:") for f in files)


def test_missing_paths_and_unknown_types(tmp_path):
    with pytest.raises(StorageAccessError, match="no such file or folder"):
        list_local(str(tmp_path / "nope.jsonl"))
    with pytest.raises(BadDataError, match="unknown file type"):
        list_local(str(_write(tmp_path / "data.txt", "x")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadDataError, match="no data files"):
        list_local(str(tmp_path / "empty"))


# Bounded reading (issue 11): a file is streamed a line at a time under ReadLimits, so
# nothing a file holds can make the reader run out of memory, and nothing is dropped
# silently: what cannot be read is refused with the file and line.


def test_a_csv_field_over_the_documented_size_refuses_the_file_naming_the_line(tmp_path):
    # Before: csv's 128 KiB field limit ended the reader, and under onInvalid: skip the
    # remaining rows vanished (1,000 rows -> 3 kept, one problem reported).
    rows = [f"p{i},c{i}" for i in range(1000)]
    rows[3] = "p3," + "x" * (200 * 1024)
    path = _write(tmp_path / "d.csv", "prompt,completion\n" + "\n".join(rows) + "\n")
    with pytest.raises(BadDataError, match=r"d\.csv:5: a CSV field longer than 128 KiB") as error:
        _read(path)
    assert "JSON Lines or Parquet" in str(error.value)


def test_a_csv_field_at_the_documented_size_is_read_whole(tmp_path):
    text = "y" * CSV_FIELD_CHARS
    path = _write(tmp_path / "d.csv", f"prompt,completion\na,{text}\nb,c\n")
    assert [r for _, r in _read(path)] == [
        {"prompt": "a", "completion": text},
        {"prompt": "b", "completion": "c"},
    ]


def test_a_broken_csv_quote_refuses_the_file_instead_of_dropping_the_rest(tmp_path):
    # The csv reader cannot go on past a row it cannot parse (here a bare carriage
    # return inside a field): the file is refused rather than cut short at that row.
    path = _write(tmp_path / "d.csv", "prompt,completion\na,b\nc\rx,d\ne,f\n")
    with pytest.raises(BadDataError, match=rf"{path}:3: unreadable CSV row"):
        _read(path)


def test_a_blank_line_inside_a_quoted_csv_field_is_kept(tmp_path):
    path = _write(tmp_path / "d.csv", 'prompt,completion\n"a\n\nb",c\nd,e\n')
    items = _read(path)
    assert items[0] == (f"{path}:2", {"prompt": "a\n\nb", "completion": "c"})
    assert items[1][0] == f"{path}:5"


def test_a_line_longer_than_the_cap_is_refused_without_reading_it_whole(tmp_path):
    # A 2 GiB line (a sparse file: no newline anywhere) is refused after the first
    # 64 MiB, with the line number, instead of an out-of-memory kill.
    path = tmp_path / "huge.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n')
    with path.open("r+b") as f:
        f.truncate(2 << 30)
    # Built by hand: list_local would spend its time hashing the 2 GiB for the fingerprint.
    file = SourceFile(uri=str(path), path=path, size=2 << 30, fingerprint="sha256:-")
    with pytest.raises(BadDataError, match=r"huge\.jsonl:2: a line longer than 64 MiB"):
        list(read_records(file))


def _gzip_bomb(path: Path, gib: int) -> Path:
    # Concatenated gzip members decompress as one stream: one member of 16 MiB of
    # blank-ish lines, repeated, makes `gib` GiB out of a few hundred KiB.
    member = gzip.compress((b" " * (1 << 20 - 1) + b"\n") * 16, compresslevel=9)
    with path.open("wb") as f:
        for _ in range(gib * 64):
            f.write(member)
    return path


def test_a_gzip_bomb_is_refused_by_its_ratio(tmp_path):
    path = _gzip_bomb(tmp_path / "bomb.jsonl.gz", gib=8)
    assert path.stat().st_size < 8 << 20
    with pytest.raises(BadDataError, match="refused as a gzip bomb"):
        _read(path)


def test_a_file_over_the_total_cap_is_refused(tmp_path):
    lines = "".join(
        json.dumps({"prompt": str(i), "completion": "x" * 100}) + "\n" for i in range(100)
    )
    path = _write(tmp_path / "d.jsonl", lines)
    limits = ReadLimits(file_bytes=4096)
    with pytest.raises(BadDataError, match=r"d\.jsonl: more than 4 KiB of data in one file"):
        [item for f in list_local(str(path))[0] for item in read_records(f, limits)]


def test_a_corrupt_gzip_stream_midway_is_bad_data(tmp_path):
    data = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in RECORDS * 1000))
    path = _write(tmp_path / "cut.jsonl.gz", data[: len(data) // 2])
    with pytest.raises(BadDataError, match="not a valid gzip file"):
        _read(path)
