"""The model's tokenizer: one way to load it, for `kubetune prepare` and `kubetune train`.

Both commands must tokenize alike: the prepared data is cached by a fingerprint of the
tokenizer (data/pipeline.py `tokenizer_fingerprint`), so a tokenizer loaded differently
by each (for instance with and without a borrowed pad token) would miss the cache that
`kubetune prepare` filled.

- `load_tokenizer(folder, source, needs_pad=...)`: from a model folder (the trainer,
  which has downloaded the whole model).
- `fetch_tokenizer(model, s3, cache_dir, needs_pad=...)`: from `spec.model.source`
  without the weights (`kubetune prepare`): a local folder is loaded in place; from
  `s3://` only the tokenizer's files are downloaded; `hf://org/name` loads from the
  Hugging Face hub where it is reachable. `pvc://` paths exist only inside the cluster.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api.locations import as_prefix, hf_repo, local_path, location_kind
from kubetune.api.v1alpha1 import ModelSpec, S3Spec, TrainingSpec
from kubetune.trainer.errors import InvalidConfigError, StorageAccessError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# What a tokenizer may consist of (transformers' file names); config.json names the class.
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.model",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "config.json",
        "generation_config.json",
    }
)


def needs_pad_token(training: TrainingSpec) -> bool:
    """Padded batches (no packing) and batched generation (exact match) need a pad token."""
    return not training.packing or training.eval_exact_match


def load_tokenizer(
    folder: str | Path, source: str, *, needs_pad: bool, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer in `folder` (or hub repository); a pad token is ensured where batches are padded.

    Padding-free packing needs no pad token. Padded batches and batched generation
    do: a tokenizer without one borrows EOS (the usual choice; padded positions are
    masked out of attention and loss, so which id fills them does not matter), and a
    tokenizer with neither is an error.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), revision=revision)
    except (OSError, ValueError, TypeError) as e:
        raise InvalidConfigError(
            f"spec.model.source: {source}: cannot load a tokenizer from it ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}); the model folder must include the tokenizer files "
            "(tokenizer.json or tokenizer.model, tokenizer_config.json)"
        ) from None
    if tokenizer.pad_token is None and needs_pad:
        if tokenizer.eos_token is None:
            raise InvalidConfigError(
                f"spec.model.source: {source}: the tokenizer has neither a pad token nor an EOS token "
                "to pad with; add a pad_token to tokenizer_config.json, or keep training.packing: true "
                "(padding-free) with training.evalExactMatch: false"
            )
        log.info(
            "the tokenizer has no pad token: padding with its EOS token %r", tokenizer.eos_token
        )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def fetch_tokenizer(
    model: ModelSpec, s3: S3Spec, cache_dir: Path, *, needs_pad: bool
) -> PreTrainedTokenizerBase:
    """The tokenizer of `model.source`, without downloading the model's weights."""
    source = model.source
    kind = location_kind(source)
    if kind == "pvc":
        raise InvalidConfigError(
            f"model.source: {source} is a PersistentVolumeClaim, reachable only inside the cluster; "
            "for a local run, point model.source at a local copy of the model (or its tokenizer)"
        )
    if kind == "hf":
        return load_tokenizer(hf_repo(source), source, needs_pad=needs_pad, revision=model.revision)
    if kind == "s3":
        from kubetune.trainer.storage import Storage

        storage = Storage(s3)
        prefix = as_prefix(source)
        wanted = [o for o in storage.list_objects(prefix) if o.relative in TOKENIZER_FILES]
        if not wanted:
            raise InvalidConfigError(
                f"model.source: no tokenizer files under {prefix} (tokenizer.json, ...)"
            )
        folder = cache_dir / "tokenizers" / prefix.removeprefix("s3://").replace("/", "_")
        for info in wanted:
            storage.download_file(info.uri, folder / info.relative)
        return load_tokenizer(folder, source, needs_pad=needs_pad)
    path = Path(local_path(source)).expanduser()
    if not path.is_dir():
        raise StorageAccessError(
            f"model.source: {source}: no such folder (a local model or tokenizer folder)"
        )
    return load_tokenizer(path, source, needs_pad=needs_pad)
