"""Dataset formats: every record becomes a conversation (or a plain text).

| format              | columns                                          | becomes                              |
|---------------------|--------------------------------------------------|--------------------------------------|
| `alpaca`            | instruction, input (optional), output           | user: instruction + input; assistant |
| `dolly`             | instruction, context (optional), response, category | user: instruction + context; assistant |
| `messages`          | messages: [{role, content}, ...]                 | as is (system/user/assistant)        |
| `sharegpt`          | conversations: [{from, value}, ...]              | human→user, gpt→assistant            |
| `prompt-completion` | prompt, completion (strings, or message lists)   | user: prompt; assistant: completion  |
| `text`              | text                                             | plain text, every token trained      |

`auto` detects the format from the first record's columns (after `dataset.columns`
renames them), per file. A conversation must start with a user turn (after an
optional system message), alternate user and assistant, and contain an assistant
turn; anything else is a `RecordProblem` naming the record and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.trainer.data.problems import RecordProblem
from kubetune.trainer.errors import BadDataError

FORMATS = ("alpaca", "dolly", "messages", "sharegpt", "prompt-completion", "text")

# Detection order matters: a Dolly record also has `instruction`, like alpaca.
_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("messages", frozenset({"messages"})),
    ("sharegpt", frozenset({"conversations"})),
    ("dolly", frozenset({"instruction", "response"})),
    ("alpaca", frozenset({"instruction", "output"})),
    ("prompt-completion", frozenset({"prompt", "completion"})),
    ("text", frozenset({"text"})),
)

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
_ROLES = ("system", "user", "assistant")


@dataclass(slots=True)
class Example:
    """One usable record, normalised."""

    where: str  # the record's place, for messages: "data.jsonl:12"
    messages: list[dict[str, str]] | None  # [{role, content}], None for plain text
    text: str | None = None  # for the text format
    group: str | None = None  # the stratification value (Dolly's category), if any


def detect_format(columns: Mapping[str, Any], where: str) -> str:
    """The format whose required columns the record has."""
    names = set(columns)
    for name, required in _SIGNATURES:
        if required <= names:
            return name
    raise BadDataError(
        f"{where}: cannot tell the format from the columns {sorted(names)}; set dataset.format to one of "
        f"{', '.join(FORMATS)}, and dataset.columns to map your column names, e.g. "
        "{instruction: question, output: answer}"
    )


class Formatter:
    """Turns raw records into Examples for one format."""

    def __init__(
        self,
        format: str,
        columns: Mapping[str, str] | None = None,
        system_prompt: str | None = None,
        stratify_by: str | None = None,
    ):
        self.format = format
        self.columns = dict(columns or {})  # {expected: actual}
        self.system_prompt = system_prompt
        self.stratify_by = stratify_by

    def rename(self, record: dict[str, Any]) -> dict[str, Any]:
        if not self.columns:
            return record
        renamed = dict(record)
        for expected, actual in self.columns.items():
            if actual in renamed:
                renamed[expected] = renamed.pop(actual)
        return renamed

    def __call__(self, where: str, record: dict[str, Any]) -> Example | RecordProblem:
        record = self.rename(record)
        try:
            if self.format == "text":
                return Example(
                    where, None, text=self._string(record, "text"), group=self._group(record)
                )
            messages = getattr(self, "_" + self.format.replace("-", "_"))(record)
            if self.system_prompt and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            _check_turns(messages)
        except _Invalid as e:
            return RecordProblem(where, e.reason, e.message)
        return Example(where, messages, group=self._group(record))

    # -- formats

    def _alpaca(self, record: dict[str, Any]) -> list[dict[str, str]]:
        prompt = _join(
            self._string(record, "instruction"), self._string(record, "input", optional=True)
        )
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": self._string(record, "output")},
        ]

    def _dolly(self, record: dict[str, Any]) -> list[dict[str, str]]:
        prompt = _join(
            self._string(record, "instruction"), self._string(record, "context", optional=True)
        )
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": self._string(record, "response")},
        ]

    def _prompt_completion(self, record: dict[str, Any]) -> list[dict[str, str]]:
        prompt, completion = record.get("prompt"), record.get("completion")
        if isinstance(prompt, list) or isinstance(completion, list):  # the conversational variant
            return self._message_list(
                prompt, "prompt", "role", "content", _ROLE_IDENTITY
            ) + self._message_list(completion, "completion", "role", "content", _ROLE_IDENTITY)
        return [
            {"role": "user", "content": self._string(record, "prompt")},
            {"role": "assistant", "content": self._string(record, "completion")},
        ]

    def _messages(self, record: dict[str, Any]) -> list[dict[str, str]]:
        return self._message_list(
            record.get("messages"), "messages", "role", "content", _ROLE_IDENTITY
        )

    def _sharegpt(self, record: dict[str, Any]) -> list[dict[str, str]]:
        return self._message_list(
            record.get("conversations"), "conversations", "from", "value", _SHAREGPT_ROLES
        )

    # -- helpers

    def _field(self, name: str) -> str:
        """The column's name as the user knows it: `answer (mapped to output)`."""
        actual = self.columns.get(name)
        return f"{actual!r} (mapped to {name} by dataset.columns)" if actual else repr(name)

    def _string(self, record: dict[str, Any], name: str, optional: bool = False) -> str:
        value = record.get(name)
        if value is None:
            if optional:
                return ""
            raise _Invalid(
                "missing-field",
                f"field {self._field(name)} is missing or null (format {self.format})",
            )
        if not isinstance(value, str):
            raise _Invalid(
                "wrong-type",
                f"field {self._field(name)} must be a string, got {type(value).__name__}",
            )
        return value

    def _message_list(
        self, value: Any, name: str, role_key: str, content_key: str, roles: Mapping[str, str]
    ) -> list[dict[str, str]]:
        if value is None:
            raise _Invalid(
                "missing-field",
                f"field {self._field(name)} is missing or null (format {self.format})",
            )
        if isinstance(value, str):  # a JSON-encoded list, as CSV files carry them
            try:
                value = json.loads(value)
            except ValueError:
                raise _Invalid(
                    "wrong-type",
                    f"field {self._field(name)} must be a list of messages, got a string",
                ) from None
        if not isinstance(value, list) or not value:
            raise _Invalid(
                "wrong-type", f"field {self._field(name)} must be a non-empty list of messages"
            )
        messages = []
        for i, message in enumerate(value):
            at = f"{name}[{i}]"
            if not isinstance(message, Mapping):
                raise _Invalid(
                    "wrong-type", f"{at} must be an object with {role_key!r} and {content_key!r}"
                )
            role, content = message.get(role_key), message.get(content_key)
            if not isinstance(role, str) or role not in roles:
                known = ", ".join(sorted(roles))
                raise _Invalid(
                    "unknown-role", f"{at}.{role_key} is {role!r}; expected one of {known}"
                )
            if not isinstance(content, str):
                kind = "missing" if content is None else f"a {type(content).__name__}"
                raise _Invalid("wrong-type", f"{at}.{content_key} must be a string, got {kind}")
            messages.append({"role": roles[role], "content": content})
        return messages

    def _group(self, record: dict[str, Any]) -> str | None:
        column = self.stratify_by or "category"
        value = record.get(column)
        return None if value is None else str(value)


_ROLE_IDENTITY = {role: role for role in _ROLES}


class _Invalid(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def _join(first: str, second: str) -> str:
    return f"{first}\n\n{second}" if second.strip() else first


def _check_turns(messages: list[dict[str, str]]) -> None:
    """System first (optional), then user/assistant alternating from a user turn, with an assistant turn."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in turns):
        raise _Invalid("bad-turns", "a system message may only come first")
    if not any(m["role"] == "assistant" for m in turns):
        raise _Invalid(
            "no-assistant-turn",
            "the conversation has no assistant turn, so nothing would be trained",
        )
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise _Invalid(
                "bad-turns",
                f"turn {i + 1} is {message['role']} where {expected} was expected; conversations start with a user "
                "turn and alternate user/assistant (merge consecutive turns of one role)",
            )
