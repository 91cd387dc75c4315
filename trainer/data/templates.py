"""Chat templates: the tokenizer's own, a built-in one by name, or an inline Jinja template.

`dataset.template`:
- `auto` (default): the tokenizer's chat template when it has one, else `chatml`.
- `tokenizer`: the tokenizer's own, and an error when it has none.
- a built-in name: `chatml`, `llama3`, `mistral`, `alpaca`, `zephyr` (below).
- anything containing `{%` or `{{`: an inline Jinja template, with the same variables
  as Hugging Face chat templates (`messages`, `add_generation_prompt`, `bos_token`,
  `eos_token`, ...).

Templates are rendered by transformers' own sandboxed Jinja environment
(`render_jinja_template`), so a template behaves exactly as in
`tokenizer.apply_chat_template` at inference. Every built-in template ends an
assistant turn with a control token (`<|im_end|>`, `<|eot_id|>` or EOS), which is
trained, so the tuned model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune.trainer.errors import InvalidConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BUILTIN: dict[str, str] = {
    # Qwen2 and most open instruct models since 2023.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Llama 3 instruct.
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # Mistral instruct v0.1-v0.3 ([INST] ... [/INST] answer</s>); a system message goes before the first user turn.
    "mistral": (
        "{{ bos_token }}"
        "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
        "{% for message in messages if message['role'] != 'system' %}"
        "{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + (system + '\n\n' if system and loop.first else '') + message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    # Stanford Alpaca's prompt, for base models without control tokens.
    "alpaca": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
    # Zephyr (HuggingFaceH4).
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}

_PROBE = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Bye?"},
    {"role": "assistant", "content": "Bye."},
]


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved template: its name for the report and the Jinja source."""

    name: str  # "tokenizer", a built-in name, or "inline"
    source: str


def resolve_template(setting: str, tokenizer: PreTrainedTokenizerBase) -> ChatTemplate:
    """The template `dataset.template` names, checked by rendering a probe conversation."""
    own = _tokenizer_template(tokenizer)
    if setting == "auto":
        template = (
            ChatTemplate("tokenizer", own) if own else ChatTemplate("chatml", BUILTIN["chatml"])
        )
    elif setting == "tokenizer":
        if not own:
            raise InvalidConfigError(
                "dataset.template: tokenizer, but the model's tokenizer has no chat template; name a built-in one "
                f"({', '.join(BUILTIN)}), write one inline, or use auto"
            )
        template = ChatTemplate("tokenizer", own)
    elif setting in BUILTIN:
        template = ChatTemplate(setting, BUILTIN[setting])
    elif "{%" in setting or "{{" in setting:
        template = ChatTemplate("inline", setting)
    else:
        raise InvalidConfigError(
            f"dataset.template: unknown template {setting!r}; use auto, tokenizer, one of {', '.join(BUILTIN)}, "
            "or an inline Jinja template"
        )
    renderer = Renderer(template, tokenizer)
    try:
        renderer.render(_PROBE)
    except Exception as e:
        # A template rejecting the system turn is allowed (some do); anything else is a broken template.
        try:
            renderer.render(_PROBE[1:])
        except Exception:
            raise InvalidConfigError(
                f"dataset.template ({template.name}) cannot render a conversation: {e}"
            ) from None
    return template


def _tokenizer_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return template or None


class Renderer:
    """Renders conversations with one template, as apply_chat_template(tokenize=False) would."""

    def __init__(self, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase):
        from transformers.utils.chat_template_utils import render_jinja_template

        self.template = template
        self._render = render_jinja_template
        # What apply_chat_template passes to every template: bos_token, eos_token, pad_token, ...
        self._variables: dict[str, Any] = {
            k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)
        }
        self._variables.setdefault("bos_token", "")
        self._variables.setdefault("eos_token", "")

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        rendered, _ = self._render(
            conversations=[messages],
            chat_template=self.template.source,
            add_generation_prompt=add_generation_prompt,
            **self._variables,
        )
        return rendered[0]
