"""A real production tokenizer for tests and benchmarks, without a model hub.

mistral-common (a dev dependency, not in the trainer image) ships the Mistral 7B v0.1
SentencePiece model; converting it gives realistic token counts where the tiny
tokenizers of `tests.support.tiny` would not.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerFast


def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """The Mistral 7B v0.1 SentencePiece tokenizer (32,000 pieces) shipped in mistral-common.

    A real production tokenizer, for realistic token counts in tests and benchmarks. It
    has no chat template (a base model's tokenizer). Converted once per process (about
    five seconds) and cached; the caller gets its own copy.
    """
    return copy.deepcopy(_mistral_tokenizer())


@lru_cache(maxsize=1)
def _mistral_tokenizer() -> PreTrainedTokenizerFast:
    import mistral_common
    from transformers import LlamaTokenizer

    model_file = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(model_file, Path(folder) / "tokenizer.model")
        tokenizer = LlamaTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer
