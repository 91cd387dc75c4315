"""prepare(): the whole pipeline on real Dolly data and on broken inputs; the cache."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from kubetune.trainer.batch import IGNORE_INDEX
from kubetune.trainer.data import pipeline
from kubetune.trainer.data.encode import Encoder
from kubetune.trainer.data.pipeline import prepare
from kubetune.trainer.errors import BadDataError
from tests.support.data import DOLLY, write_jsonl


def test_dolly_sample_end_to_end(make_job, sp_tokenizer, tmp_path):
    job = make_job(
        DOLLY,
        dataset={
            "template": "mistral",
            "validation": {"fraction": 0.05},
            "test": {"fraction": 0.02},
            "redact": ["email", "url"],
        },
        training={"maxSeqLength": 2048},
    )
    prepared = prepare(job, tmp_path / "work", sp_tokenizer)
    report = prepared.report
    assert report["files"][0]["records"] == 1088 and report["files"][0]["format"] == "dolly"
    examples = report["examples"]
    assert examples["read"] == 1088 and examples["kept"] + sum(examples["dropped"].values()) == 1088
    splits = report["splits"]
    assert (splits["validation"]["examples"], splits["test"]["examples"]) == (54, 22)
    train = splits["train"]
    assert train["packs"] == train["fewestPossiblePacks"] == len(prepared.train)
    assert train["packingEfficiency"] >= 0.99
    assert report["redactions"]["url"] > 0
    assert set(report["seconds"]) >= {"list", "read", "split", "redact", "encode", "pack", "total"}
    # Stratified by Dolly's category: every category of the validation split is in train too.
    # Rows: positions restart per example, seq_lengths add up, labels are ids or -100.
    for row in prepared.train.select(range(5)):
        ids, labels, positions, lengths = (
            np.asarray(row[k]) for k in ("input_ids", "labels", "position_ids", "seq_lengths")
        )
        assert len(ids) <= 2048 and lengths.sum() == len(ids)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        assert (positions[starts] == 0).all() and (labels[starts] == IGNORE_INDEX).all()
        trained = labels != IGNORE_INDEX
        assert (labels[trained] == ids[trained]).all()
    assert sum(len(r) for r in prepared.train["seq_lengths"]) == train["examples"]


def test_a_second_run_loads_the_cache_without_tokenizing(
    make_job, tokenizer, tmp_path, monkeypatch
):
    job = make_job(DOLLY, dataset={"maxExamples": 100})
    first = prepare(job, tmp_path, tokenizer)
    assert not first.from_cache

    def no_encoding(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(Encoder, "encode", no_encoding)
    second = prepare(job, tmp_path, tokenizer)
    assert second.from_cache and second.report == first.report
    assert second.train["input_ids"] == first.train["input_ids"]
    # Another setting is another entry: tokenized again.
    with pytest.raises(AssertionError, match="tokenized again"):
        prepare(
            job.model_copy(
                update={
                    "spec": job.spec.model_copy(
                        update={"training": job.spec.training.model_copy(update={"seed": 1})}
                    )
                }
            ),
            tmp_path,
            tokenizer,
        )


def test_an_interrupted_entry_is_not_taken_for_complete(make_job, tokenizer, tmp_path, monkeypatch):
    job = make_job(DOLLY, dataset={"maxExamples": 50})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(job, tmp_path, tokenizer)
    assert not list((tmp_path / "prepared").iterdir())  # the staging folder was removed
    monkeypatch.undo()
    assert not prepare(job, tmp_path, tokenizer).from_cache


def _bad_file(tmp_path):
    return write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"instruction": "a", "output": "b"},
            {"instruction": "c"},
            {"instruction": "d", "output": 5},
            {"instruction": "e", "output": "f"},
        ],
    )


def test_bad_records_fail_listing_where_and_what(make_job, tokenizer, tmp_path):
    path = _bad_file(tmp_path)
    with pytest.raises(BadDataError) as error:
        prepare(make_job(path), tmp_path / "work", tokenizer)
    message = str(error.value)
    assert "2 unusable record(s) (missing-field: 1, wrong-type: 1)" in message
    assert f"{path}:2: field 'output' is missing" in message
    assert f"{path}:3: field 'output' must be a string, got int" in message
    assert "dataset.onInvalid: skip" in message


def test_skip_drops_and_counts_bad_records(make_job, tokenizer, tmp_path):
    prepared = prepare(
        make_job(_bad_file(tmp_path), dataset={"onInvalid": "skip"}), tmp_path / "work", tokenizer
    )
    assert prepared.report["examples"]["invalid"] == {"missing-field": 1, "wrong-type": 1}
    assert prepared.report["examples"]["kept"] == 2


def test_nothing_left_after_filtering_is_bad_data(make_job, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "p " * 300, "completion": "c"}])
    with pytest.raises(
        BadDataError,
        match=r"no training example left after filtering \(1 records read; dropped: overlong: 1\)",
    ):
        prepare(
            make_job(path, training={"maxSeqLength": 64, "overlong": "drop"}),
            tmp_path / "work",
            tokenizer,
        )


def test_held_out_splits_from_their_own_sources_and_plain_text(make_job, tokenizer, tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"text": f"document number {i} about packing"} for i in range(20)],
    )
    held = write_jsonl(tmp_path / "val.jsonl", [{"text": "a held-out document"}])
    job = make_job(
        train, dataset={"validation": {"source": str(held)}}, training={"packing": False}
    )
    prepared = prepare(job, tmp_path / "work", tokenizer)
    assert len(prepared.train) == 20 and len(prepared.validation) == 1 and prepared.test is None
    assert prepared.report["template"] is None
    row = prepared.validation[0]
    assert (
        row["seq_lengths"] == [len(row["input_ids"])]
        and row["input_ids"][-1] == tokenizer.eos_token_id
    )


def test_save_writes_parquet_and_the_report(make_job, tokenizer, tmp_path):
    prepared = prepare(make_job(DOLLY, dataset={"maxExamples": 40}), tmp_path / "work", tokenizer)
    written = prepared.save(tmp_path / "out", tmp_path / "r" / "report.json")
    assert [p.name for p in written] == ["train.parquet", "report.json"]
    table = pq.read_table(tmp_path / "out" / "train.parquet")
    assert table.column_names == ["input_ids", "labels", "position_ids", "seq_lengths"]
    examples = json.loads((tmp_path / "r" / "report.json").read_text())["examples"]
    assert (examples["read"], examples["beyondMaxExamples"]) == (1088, 1048)
    assert examples["kept"] + sum(examples["dropped"].values()) == 40


def test_cache_key_follows_the_inputs(make_job, tokenizer, plain_tokenizer, tmp_path):
    files, _ = pipeline.list_local(str(DOLLY))
    job = make_job(DOLLY)
    key = pipeline.cache_key({"train": files}, tokenizer, None, job.spec.dataset, job.spec.training)
    assert key == pipeline.cache_key(
        {"train": files}, tokenizer, None, job.spec.dataset, job.spec.training
    )
    assert key != pipeline.cache_key(
        {"train": files}, plain_tokenizer, None, job.spec.dataset, job.spec.training
    )
    other = job.spec.training.model_copy(update={"max_seq_length": 1024})
    assert key != pipeline.cache_key({"train": files}, tokenizer, None, job.spec.dataset, other)
    unrelated = job.spec.training.model_copy(update={"learning_rate": 0.1})
    assert key == pipeline.cache_key({"train": files}, tokenizer, None, job.spec.dataset, unrelated)
