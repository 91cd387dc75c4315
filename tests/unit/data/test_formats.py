"""Every format becomes a conversation; bad records become problems naming the field."""

from __future__ import annotations

import pytest

from kubetune.trainer.data.formats import Example, Formatter, detect_format
from kubetune.trainer.data.problems import RecordProblem
from kubetune.trainer.errors import BadDataError

U, A, S = "user", "assistant", "system"


def _turns(result: Example | RecordProblem) -> list[tuple[str, str]]:
    assert isinstance(result, Example), result
    assert result.messages is not None
    return [(m["role"], m["content"]) for m in result.messages]


@pytest.mark.parametrize(
    "record, fmt, turns",
    [
        (
            {"instruction": "Sum", "input": "1 2", "output": "3"},
            "alpaca",
            [(U, "Sum\n\n1 2"), (A, "3")],
        ),
        ({"instruction": "Hi", "input": "", "output": "Yo"}, "alpaca", [(U, "Hi"), (A, "Yo")]),
        (
            {
                "instruction": "When?",
                "context": "In 2000.",
                "response": "2000",
                "category": "closed_qa",
            },
            "dolly",
            [(U, "When?\n\nIn 2000."), (A, "2000")],
        ),
        (
            {
                "messages": [
                    {"role": S, "content": "Be brief."},
                    {"role": U, "content": "a"},
                    {"role": A, "content": "b"},
                    {"role": U, "content": "c"},
                    {"role": A, "content": "d"},
                ]
            },
            "messages",
            [(S, "Be brief."), (U, "a"), (A, "b"), (U, "c"), (A, "d")],
        ),
        (
            {
                "conversations": [
                    {"from": "system", "value": "s"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "r"},
                ]
            },
            "sharegpt",
            [(S, "s"), (U, "q"), (A, "r")],
        ),
        ({"prompt": "p", "completion": "c"}, "prompt-completion", [(U, "p"), (A, "c")]),
        (
            {"prompt": [{"role": U, "content": "p"}], "completion": [{"role": A, "content": "c"}]},
            "prompt-completion",
            [(U, "p"), (A, "c")],
        ),
    ],
)
def test_formats_are_detected_and_normalised(record, fmt, turns):
    assert detect_format(record, "x") == fmt
    assert _turns(Formatter(fmt)("x", record)) == turns


def test_text_format_keeps_the_text():
    assert detect_format({"text": "t"}, "x") == "text"
    example = Formatter("text")("x", {"text": "Some domain text."})
    assert (
        isinstance(example, Example)
        and example.text == "Some domain text."
        and example.messages is None
    )


def test_dolly_category_is_the_stratification_group():
    example = Formatter("dolly")("x", {"instruction": "i", "response": "r", "category": "open_qa"})
    assert isinstance(example, Example) and example.group == "open_qa"
    custom = Formatter("alpaca", stratify_by="topic")(
        "x", {"instruction": "i", "output": "o", "topic": "math"}
    )
    assert isinstance(custom, Example) and custom.group == "math"


def test_columns_map_names_and_errors_use_the_users_names():
    formatter = Formatter("auto", {"instruction": "question", "output": "answer"})
    renamed = formatter.rename({"question": "q", "answer": "a"})
    assert detect_format(renamed, "x") == "alpaca"
    formatter = Formatter("alpaca", {"instruction": "question", "output": "answer"})
    assert _turns(formatter("x", {"question": "q", "answer": "a"})) == [(U, "q"), (A, "a")]
    problem = formatter("f.jsonl:3", {"question": "q"})
    assert isinstance(problem, RecordProblem) and problem.reason == "missing-field"
    assert "'answer' (mapped to output by dataset.columns)" in problem.message


def test_system_prompt_is_added_where_there_is_none():
    formatter = Formatter("messages", system_prompt="Be kind.")
    plain = formatter("x", {"messages": [{"role": U, "content": "a"}, {"role": A, "content": "b"}]})
    assert _turns(plain)[0] == (S, "Be kind.")
    own = formatter(
        "x",
        {
            "messages": [
                {"role": S, "content": "Own."},
                {"role": U, "content": "a"},
                {"role": A, "content": "b"},
            ]
        },
    )
    assert _turns(own)[0] == (S, "Own.")


@pytest.mark.parametrize(
    "fmt, record, reason, words",
    [
        ("alpaca", {"instruction": "i"}, "missing-field", "field 'output' is missing"),
        ("dolly", {"instruction": "i", "response": 3}, "wrong-type", "must be a string, got int"),
        (
            "messages",
            {"messages": [{"role": U, "content": "only a question"}]},
            "no-assistant-turn",
            "no assistant turn",
        ),
        (
            "messages",
            {"messages": [{"role": "tool", "content": "x"}]},
            "unknown-role",
            "messages[0].role is 'tool'",
        ),
        (
            "messages",
            {"messages": [{"role": U, "content": None}]},
            "wrong-type",
            "messages[0].content must be a string, got missing",
        ),
        ("messages", {"messages": []}, "wrong-type", "non-empty list"),
        (
            "messages",
            {"messages": [{"role": A, "content": "a"}, {"role": U, "content": "b"}]},
            "bad-turns",
            "turn 1 is assistant",
        ),
        (
            "messages",
            {
                "messages": [
                    {"role": U, "content": "a"},
                    {"role": S, "content": "b"},
                    {"role": A, "content": "c"},
                ]
            },
            "bad-turns",
            "system message may only come first",
        ),
        (
            "sharegpt",
            {"conversations": [{"from": "bot", "value": "x"}]},
            "unknown-role",
            "conversations[0].from is 'bot'",
        ),
        ("prompt-completion", {"prompt": "p"}, "missing-field", "field 'completion'"),
    ],
)
def test_bad_records_are_problems_with_reason_and_field(fmt, record, reason, words):
    problem = Formatter(fmt)("data.jsonl:7", record)
    assert isinstance(problem, RecordProblem)
    assert (problem.where, problem.reason) == ("data.jsonl:7", reason)
    assert words in problem.message


def test_json_encoded_message_lists_from_csv_are_parsed():
    record = {
        "messages": '[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]'
    }
    assert _turns(Formatter("messages")("x", record)) == [(U, "a"), (A, "b")]


def test_unknown_columns_say_how_to_fix():
    with pytest.raises(
        BadDataError,
        match=r"f.jsonl:1: cannot tell the format from the columns \['a', 'b'\]; set dataset.format",
    ):
        detect_format({"a": 1, "b": 2}, "f.jsonl:1")
