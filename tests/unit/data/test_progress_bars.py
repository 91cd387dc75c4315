"""Progress bars for the long steps (model download, data preparation, evaluation): on a
terminal only; a pod's log (not a terminal) gets none."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from kubetune.trainer.data.pipeline import prepare
from kubetune.trainer.logs import terminal_progress
from kubetune.trainer.storage import Storage
from tests.support.data import DOLLY


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    # In the test's body: pytest's output capture resets sys.stderr after fixtures.
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    return screen


def test_bars_show_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with terminal_progress(4, desc="evaluating", unit="row") as bar:
        bar.update(4)
    assert "evaluating" in screen.getvalue() and "/4" in screen.getvalue()
    log = io.StringIO()  # a pod's log: not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    with terminal_progress(4, desc="evaluating") as bar:
        bar.update(4)
    assert log.getvalue() == ""
    with terminal_progress(4, desc="rank 1", enabled=False) as bar:
        bar.update(4)
    assert log.getvalue() == ""


def test_model_download_shows_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"x" * 3000)
    (source / "config.json").write_text("{}")
    terminal = on_a_terminal(monkeypatch)
    Storage().download_prefix(str(source) + "/", tmp_path / "copy", progress=True)
    assert "downloading" in terminal.getvalue() and "3.00k" in terminal.getvalue(), (
        terminal.getvalue()
    )


def test_data_preparation_shows_examples(monkeypatch, make_job, tokenizer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    terminal = on_a_terminal(monkeypatch)
    prepare(make_job(DOLLY), tmp_path / "work", tokenizer)
    assert "tokenizing train" in terminal.getvalue()
