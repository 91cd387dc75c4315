"""Template, tokenize and mask: conversations become token ids and labels.

How the trained tokens are found, for any template (the tokenizer's own, built-in or
inline) without `{% generation %}` markers:

1. Render the whole conversation to text, as `apply_chat_template` would.
2. For each trained assistant turn `i`, render the conversation up to turn `i` with the
   generation prompt (`<|im_start|>assistant\\n`), and up to and including turn `i`.
   The turn's trained characters run from the end of the first to the end of the
   second, trailing whitespace excepted: the reply and its end-of-turn token
   (`<|im_end|>`, `<|eot_id|>`, EOS), not the generation prompt.
   Both renders must be prefixes of the whole text; a template that renders earlier
   turns differently depending on what follows (some drop past reasoning) is refused
   for `lossOn: responses`.
3. Tokenize the whole text once (fast tokenizer, in Rust, batched) with character
   offsets; a token is trained when its characters overlap a trained span.

A trained turn must end in a stop token (EOS or a special token such as `<|im_end|>`)
or the model never learns to stop; when a template leaves none, EOS is appended to
the turn and counted (`eosAppended` in the report). Label -100 marks untrained tokens;
the first token of every example is never trained (nothing predicts it), which is
also what keeps a packed example from being predicted by the one before it.

Text in a record that spells a control token (`</s>`, `<|im_end|>`) would be read as
that token and could end or forge turns; such records are problems
(`control-token-in-text`), not silently encoded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from kubetune.trainer.batch import IGNORE_INDEX
from kubetune.trainer.data.formats import Example
from kubetune.trainer.data.problems import RecordProblem
from kubetune.trainer.data.templates import ChatTemplate, Renderer
from kubetune.trainer.errors import InvalidConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LossOn = Literal["responses", "last-response", "all"]


@dataclass
class Encoded:
    """Token ids and labels of the examples that were kept, with what happened to the others."""

    input_ids: list[np.ndarray] = field(default_factory=list)  # int32 per example
    labels: list[np.ndarray] = field(default_factory=list)  # int32, -100 where not trained
    groups: list[str | None] = field(default_factory=list)  # stratification value per kept example
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> examples
    truncated: int = 0
    eos_appended: int = 0
    problems: list[RecordProblem] = field(default_factory=list)  # records that could not be encoded

    def extend(self, other: Encoded) -> None:
        self.input_ids += other.input_ids
        self.labels += other.labels
        self.groups += other.groups
        self.dropped += other.dropped
        self.truncated += other.truncated
        self.eos_appended += other.eos_appended
        self.problems += other.problems


class Encoder:
    """Encodes Examples with one tokenizer and template; picklable for worker processes."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate | None,
        loss_on: LossOn,
        max_length: int,
        overlong: Literal["truncate", "drop"],
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise InvalidConfigError(
                "the model's tokenizer has no fast (Rust) version, which kubetune needs for character offsets; "
                "save the tokenizer with tokenizer.json"
            )
        if tokenizer.eos_token_id is None:
            raise InvalidConfigError(
                "the model's tokenizer has no EOS token, so a tuned model could not learn to stop"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.loss_on = loss_on
        self.max_length = max_length
        self.overlong = overlong
        self.eos_id = int(tokenizer.eos_token_id)
        # Stop tokens: EOS and every special added token (end-of-turn markers such as <|im_end|>).
        self.stop_ids = {self.eos_id} | {
            int(i)
            for i, t in tokenizer.added_tokens_decoder.items()
            if getattr(t, "special", False)
        }
        controls = sorted((t for t in tokenizer.added_tokens_encoder if t), key=len, reverse=True)
        self._control = re.compile("|".join(map(re.escape, controls))) if controls else None
        self._renderer = Renderer(template, tokenizer) if template is not None else None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_renderer"] = None  # holds a compiled template; rebuilt in the worker
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.template is not None:
            self._renderer = Renderer(self.template, self.tokenizer)

    # -- public

    def encode(self, examples: Sequence[Example]) -> Encoded:
        out = Encoded()
        texts: list[str] = []
        spans: list[
            list[tuple[int, int]] | None
        ] = []  # None: train every token (text format, lossOn all)
        kept: list[Example] = []
        for example in examples:
            try:
                text, trained = self._render(example)
            except _Unusable as e:
                out.problems.append(RecordProblem(example.where, e.reason, e.message))
                continue
            texts.append(text)
            spans.append(trained)
            kept.append(example)
        if not texts:
            return out
        plain = kept[0].messages is None
        batch = self.tokenizer(
            texts,
            add_special_tokens=plain,  # templates write BOS themselves
            return_offsets_mapping=not plain,
            return_attention_mask=False,
            verbose=False,
        )
        offsets = batch["offset_mapping"] if not plain else [None] * len(texts)
        for example, ids, offs, trained in zip(
            kept, batch["input_ids"], offsets, spans, strict=True
        ):
            self._finish(out, example, np.asarray(ids, dtype=np.int32), offs, trained)
        return out

    # -- steps

    def _render(self, example: Example) -> tuple[str, list[tuple[int, int]] | None]:
        if example.messages is None:
            self._check_controls(example.text or "", "text")
            return example.text or "", None
        for i, message in enumerate(example.messages):
            self._check_controls(message["content"], f"message {i + 1} ({message['role']})")
        assert self._renderer is not None
        render = self._renderer.render
        messages = example.messages
        full = render(messages)
        if self.loss_on == "all":
            return full, None
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if self.loss_on == "last-response":
            turns = turns[-1:]
        trained = []
        for i in turns:
            prompt = render(messages[:i], add_generation_prompt=True)
            through = full if i == len(messages) - 1 else render(messages[: i + 1])
            if not (full.startswith(through) and through.startswith(prompt)):
                raise InvalidConfigError(
                    f"{example.where}: the chat template ({self.template.name if self.template else '?'}) renders "
                    "earlier turns differently depending on what follows, so the trained part of each assistant "
                    "turn cannot be found; use training.lossOn: last-response or another dataset.template"
                )
            trained.append((len(prompt), len(through.rstrip())))
        return full, trained

    def _check_controls(self, text: str, what: str) -> None:
        if self._control is not None and (match := self._control.search(text)):
            raise _Unusable(
                "control-token-in-text",
                f"{what} contains {match.group()!r}, which the tokenizer reads as a control token and would end or "
                "forge a turn; remove it from the data (or set dataset.onInvalid: skip)",
            )

    def _finish(
        self,
        out: Encoded,
        example: Example,
        ids: np.ndarray,
        offsets: list[tuple[int, int]] | None,
        trained: list[tuple[int, int]] | None,
    ) -> None:
        if trained is None:
            labels = ids.copy()
            if ids.size == 0 or ids[-1] != self.eos_id:
                ids = np.append(ids, np.int32(self.eos_id))
                labels = np.append(labels, np.int32(self.eos_id))
                if (
                    example.messages is not None
                ):  # lossOn: all on a template without a final stop token
                    out.eos_appended += 1
        else:
            ids, labels, appended = self._mask(ids, offsets, trained)
            out.eos_appended += appended
        if ids.size == 0:
            out.dropped["empty"] += 1
            return
        labels[0] = IGNORE_INDEX
        if ids.size > self.max_length:
            if self.overlong == "drop":
                out.dropped["overlong"] += 1
                return
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            out.truncated += 1
        if not (labels != IGNORE_INDEX).any():
            out.dropped["no-trained-tokens"] += 1
            return
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.groups.append(example.group)

    def _mask(
        self, ids: np.ndarray, offsets: list[tuple[int, int]] | None, trained: list[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray, int]:
        assert offsets is not None
        spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        starts, ends = spans[:, 0], spans[:, 1]
        labels = np.full_like(ids, IGNORE_INDEX)
        inserts: list[int] = []  # positions after which EOS is appended
        for begin, end in trained:
            inside = ((ends > begin) & (starts < end)) | (
                (ends == starts) & (starts >= begin) & (starts < end)
            )
            where = np.flatnonzero(inside)
            if where.size == 0:
                continue
            labels[where] = ids[where]
            last = int(where[-1])
            if int(ids[last]) not in self.stop_ids:
                inserts.append(last + 1)
        if inserts:
            eos = np.int32(self.eos_id)
            ids = np.insert(ids, inserts, eos)
            labels = np.insert(labels, inserts, eos)
        return ids, labels, len(inserts)


class _Unusable(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message
