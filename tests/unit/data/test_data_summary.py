"""The data figures of the model card and training-summary.json: the training split's own.

A separate validation source must not be counted as training data (issue 16: the card
said "examples 975" where the training split had 781).
"""

from __future__ import annotations

from kubetune.trainer.export import model_card
from kubetune.trainer.training_data import prepare_data
from tests.support.data import write_jsonl


def test_the_card_and_summary_give_each_split_apart(make_job, tokenizer, tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        # 200: enough to pack into 16 rows or more (the small-data rule unpacks fewer)
        [{"text": f"training document {i} about packing"} for i in range(200)],
    )
    held = write_jsonl(
        tmp_path / "val.jsonl", [{"text": f"a held-out document {i}"} for i in range(12)]
    )
    job = make_job(
        train,
        dataset={"validation": {"source": str(held)}},
        training={"packing": True, "maxSeqLength": 64},
    )
    data = prepare_data(job, tmp_path / "work", tokenizer, storage=None)
    splits = data.report["splits"]
    assert (splits["train"]["examples"], splits["validation"]["examples"]) == (200, 12)
    # Packing put several examples in a row: rows and examples differ, and both are given.
    assert len(data.train) == splits["train"]["rows"] < 200

    figures = data.summary
    assert figures["train examples"] == 200 and figures["validation examples"] == 12
    assert figures["train rows"] == len(data.train)
    for name in ("tokens", "trainedTokens"):
        key = name.replace("trainedTokens", "trained tokens")
        assert figures[f"train {key}"] == splits["train"][name]
        assert figures[f"validation {key}"] == splits["validation"][name]
        # The report's total counts both splits: the card must not show it as training data.
        assert data.report[name] == figures[f"train {key}"] + figures[f"validation {key}"]
    assert not {"examples", "tokens", "trained tokens"} & set(figures)

    card = model_card(job, {"data": figures})
    assert "| train examples | 200 |" in card and "| validation examples | 12 |" in card
    assert f"| train rows | {len(data.train)} |" in card
    assert f"| train tokens | {splits['train']['tokens']} |" in card
    assert f"| validation source | {held} |" in card
    assert "| examples | 42 |" not in card
