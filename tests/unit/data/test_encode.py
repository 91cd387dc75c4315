"""Templates and loss masks: what is trained is exactly the replies and their end-of-turn."""

from __future__ import annotations

import numpy as np
import pytest

from kubetune.trainer.batch import IGNORE_INDEX
from kubetune.trainer.data.encode import Encoder
from kubetune.trainer.data.formats import Example
from kubetune.trainer.data.templates import BUILTIN, resolve_template
from kubetune.trainer.errors import InvalidConfigError

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


def _encode(
    tokenizer,
    template="auto",
    loss_on="responses",
    max_length=4096,
    overlong="truncate",
    messages=CHAT,
):
    encoder = Encoder(
        tokenizer, resolve_template(template, tokenizer), loss_on, max_length, overlong
    )
    return encoder.encode([Example("x", [dict(m) for m in messages])])


def _trained(tokenizer, encoded) -> str:
    ids, labels = encoded.input_ids[0], encoded.labels[0]
    return tokenizer.decode(ids[labels != IGNORE_INDEX])


def test_tokenizer_template_trains_each_reply_with_its_end_of_turn(tokenizer):
    encoded = _encode(tokenizer)
    assert _trained(tokenizer, encoded) == "Paris.<|im_end|>Rome.<|im_end|>"
    assert encoded.eos_appended == 0
    # Labels equal the ids where trained; the ids are exactly the template's rendering.
    ids, labels = encoded.input_ids[0], encoded.labels[0]
    assert np.array_equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    assert (
        list(ids)
        == tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    )


def test_last_response_and_all(tokenizer):
    assert _trained(tokenizer, _encode(tokenizer, loss_on="last-response")) == "Rome.<|im_end|>"
    everything = _encode(tokenizer, loss_on="all")
    labels = everything.labels[0]
    assert labels[0] == IGNORE_INDEX and (labels[1:] != IGNORE_INDEX).all()


@pytest.mark.parametrize(
    "template, trained",
    [
        ("chatml", "Paris.<|im_end|>Rome.<|im_end|>"),
        ("mistral", " Paris.</s> Rome.</s>"),
        ("alpaca", "Paris.</s>Rome.</s>"),
        ("zephyr", "Paris.</s>Rome.</s>"),
    ],
)
def test_builtin_templates_end_replies_with_a_stop_token(tokenizer, template, trained):
    encoded = _encode(tokenizer, template)
    assert _trained(tokenizer, encoded) == trained
    assert encoded.eos_appended == 0


def test_eos_is_appended_when_the_template_leaves_no_stop_token(tokenizer):
    # <|eot_id|> is plain text for this tokenizer, so the turn would not end in a stop token.
    encoded = _encode(tokenizer, "llama3")
    assert _trained(tokenizer, encoded) == "Paris.<|eot_id|></s>Rome.<|eot_id|></s>"
    assert encoded.eos_appended == 2


def test_inline_template(tokenizer):
    inline = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    encoded = _encode(tokenizer, inline)
    assert _trained(tokenizer, encoded).replace(" ", "") == "Paris.</s>Rome.</s>"


def test_template_settings(tokenizer, plain_tokenizer):
    assert resolve_template("auto", tokenizer).name == "tokenizer"
    assert resolve_template("auto", plain_tokenizer).name == "chatml"
    assert resolve_template("zephyr", tokenizer).source == BUILTIN["zephyr"]
    with pytest.raises(InvalidConfigError, match="has no chat template"):
        resolve_template("tokenizer", plain_tokenizer)
    with pytest.raises(InvalidConfigError, match="unknown template 'vicuna'"):
        resolve_template("vicuna", tokenizer)
    with pytest.raises(InvalidConfigError, match="cannot render"):
        resolve_template("{% for m in messages %}{{ m.content }", tokenizer)


def test_templates_that_rewrite_history_are_refused_for_all_responses(tokenizer):
    # Like reasoning templates that drop past replies' content: earlier turns render differently.
    rewriting = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}<|im_start|>assistant\n...<|im_end|>\n"
        "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(InvalidConfigError, match="lossOn: last-response"):
        _encode(tokenizer, rewriting)
    assert (
        _trained(tokenizer, _encode(tokenizer, rewriting, loss_on="last-response"))
        == "Rome.<|im_end|>"
    )


def test_control_tokens_in_content_are_problems(tokenizer):
    messages = [
        {"role": "user", "content": "say <|im_end|> please"},
        {"role": "assistant", "content": "ok"},
    ]
    encoded = _encode(tokenizer, messages=messages)
    assert not encoded.input_ids
    assert encoded.problems[0].reason == "control-token-in-text"
    assert "'<|im_end|>'" in encoded.problems[0].message


def test_overlong_examples_are_truncated_or_dropped_and_counted(tokenizer):
    long = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 200}]
    truncated = _encode(tokenizer, max_length=64, messages=long)
    assert len(truncated.input_ids[0]) == 64 and truncated.truncated == 1
    dropped = _encode(tokenizer, max_length=64, overlong="drop", messages=long)
    assert not dropped.input_ids and dropped.dropped["overlong"] == 1
    # A prompt longer than the limit leaves nothing trained: dropped and counted, never kept.
    prompt_only = [
        {"role": "user", "content": "word " * 200},
        {"role": "assistant", "content": "ok"},
    ]
    nothing = _encode(tokenizer, max_length=64, messages=prompt_only)
    assert not nothing.input_ids and nothing.dropped["no-trained-tokens"] == 1


def test_plain_text_trains_every_token_and_ends_with_eos(tokenizer):
    encoder = Encoder(tokenizer, None, "responses", 4096, "truncate")
    encoded = encoder.encode([Example("x", None, text="Domain text about packing.")])
    ids, labels = encoded.input_ids[0], encoded.labels[0]
    assert ids[-1] == tokenizer.eos_token_id
    assert labels[0] == IGNORE_INDEX and np.array_equal(labels[1:], ids[1:])


def test_sentencepiece_tokenizer_masks_on_character_offsets(sp_tokenizer):
    encoded = _encode(sp_tokenizer, "mistral")
    assert _trained(sp_tokenizer, encoded) == "Paris.</s> Rome.</s>"
    ids = encoded.input_ids[0]
    assert ids[0] == sp_tokenizer.bos_token_id
