"""The tiny model and tokenizer builders that tests, benchmarks and the demo share."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support.tiny import IM_END, build_tokenizer, save_tiny


def test_tokenizer_is_deterministic_and_has_chat_controls():
    first, second = build_tokenizer(), build_tokenizer()
    text = "Paris is the capital of France."
    assert first(text).input_ids == second(text).input_ids
    assert IM_END in first.all_special_tokens and first.chat_template
    assert build_tokenizer(chat_template=None).chat_template is None


def test_saved_tiny_model_loads_back_and_generates(tmp_path):
    path = save_tiny(tmp_path / "tiny", arch="qwen2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert tokenizer.convert_tokens_to_ids(IM_END) in model.generation_config.eos_token_id
