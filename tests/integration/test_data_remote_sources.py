"""Datasets over https:// (fsspec's HTTP filesystem) against a real local HTTP server,
and on a PVC.

No outside host is reachable where kubetune is tested, so the server is Python's own
http.server on 127.0.0.1, serving tests/data: the same code path as any https:// host
(fsspec's aiohttp client, HEAD for size and version, GET for the bytes).
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.manifest import parse_tuningjob
from kubetune.trainer.data import prepare
from kubetune.trainer.errors import InvalidConfigError, StorageAccessError
from tests.support.tiny import build_tokenizer

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(DATA))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:  # client hang-ups
            pass

    httpd = Quiet(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def job(source: str, out: Path, **dataset: Any) -> Any:
    return parse_tuningjob(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "TuningJob",
            "metadata": {"name": "remote"},
            "spec": {
                "model": {"source": "unused"},
                "dataset": {"source": source, **dataset},
                "output": {"destination": str(out)},
                "resources": {"gpus": 0},
            },
        }
    )


def test_a_dataset_over_http_is_read_fingerprinted_and_cached(server: str, tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    source = f"{server}/marketing-emails.jsonl"
    validation = f"{server}/dolly-sample.jsonl"
    the_job = job(source, tmp_path / "out", validation={"source": validation})
    data = prepare(the_job, tmp_path / "work", tokenizer)
    assert not data.from_cache
    assert len(data.train) == 17
    assert data.validation is not None and len(data.validation) > 0
    files = {f["uri"]: f for f in data.report["files"]}
    assert files[source]["records"] == 17 and files[source]["format"] == "alpaca"
    assert files[source]["fingerprint"].startswith("remote:") and files[source]["bytes"] > 0
    again = prepare(the_job, tmp_path / "work", tokenizer)
    assert again.from_cache  # known by its version and size, without downloading it again


def test_missing_files_and_unknown_schemes_say_what_and_where(server: str, tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    with pytest.raises(StorageAccessError, match=r"/missing\.jsonl: no such file"):
        prepare(job(f"{server}/missing.jsonl", tmp_path / "a"), tmp_path / "work", tokenizer)
    with pytest.raises(InvalidConfigError, match=r"cannot read gs:// here .*gcsfs"):
        prepare(job("gs://bucket/data.jsonl", tmp_path / "b"), tmp_path / "work", tokenizer)
    with pytest.raises(InvalidConfigError, match=r"hf:// is for models"):
        prepare(job("hf://org/data", tmp_path / "c"), tmp_path / "work", tokenizer)


def test_a_dataset_on_a_pvc_is_read_where_the_operator_mounts_the_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pod sees pvc://datasets/emails/... at /mnt/pvc/datasets/emails/...; here the
    # mount root is a folder of the test (KUBETUNE_PVC_ROOT, as for models).
    root = tmp_path / "pvc"
    (root / "datasets" / "emails").mkdir(parents=True)
    (root / "datasets" / "emails" / "train.jsonl").write_bytes(
        (DATA / "marketing-emails.jsonl").read_bytes()
    )
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(root))
    tokenizer = build_tokenizer()
    data = prepare(job("pvc://datasets/emails/", tmp_path / "out"), tmp_path / "work", tokenizer)
    assert len(data.train) == 17
    with pytest.raises(StorageAccessError, match=r"the claim 'other' is mounted at"):
        prepare(job("pvc://other/x.jsonl", tmp_path / "out"), tmp_path / "work", tokenizer)
