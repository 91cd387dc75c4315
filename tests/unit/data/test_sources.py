"""Reading data files: every format, and precise errors for the broken ones."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.trainer.data.problems import RecordProblem
from kubetune.trainer.data.sources import list_local, read_records
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
