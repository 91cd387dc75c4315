"""The tokenizer of `spec.model.source`, without the model's weights.

`kubetune prepare` needs only the tokenizer: from a local folder it is loaded in
place; from `s3://` only the tokenizer's files are downloaded (not the weights);
`hf://org/name` loads from the Hugging Face hub where it is reachable. `pvc://`
paths exist only inside the cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api.v1alpha1 import ModelSpec, S3Spec
from kubetune.trainer.errors import InvalidConfigError, StorageAccessError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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


def load_tokenizer(model: ModelSpec, s3: S3Spec, cache_dir: Path) -> PreTrainedTokenizerBase:
    source = model.source
    if source.startswith("pvc://"):
        raise InvalidConfigError(
            f"model.source: {source} is a PersistentVolumeClaim, reachable only inside the cluster; "
            "for a local run, point model.source at a local copy of the model (or its tokenizer)"
        )
    if source.startswith("hf://"):
        return _load(source.removeprefix("hf://"), revision=model.revision)
    if source.startswith("s3://"):
        from kubetune.trainer.storage import Storage

        storage = Storage(s3)
        prefix = source if source.endswith("/") else source + "/"
        wanted = [o for o in storage.list_objects(prefix) if o.relative in TOKENIZER_FILES]
        if not wanted:
            raise InvalidConfigError(
                f"model.source: no tokenizer files under {prefix} (tokenizer.json, ...)"
            )
        folder = cache_dir / "tokenizers" / prefix.removeprefix("s3://").replace("/", "_")
        for info in wanted:
            storage.download_file(info.uri, folder / info.relative)
        return _load(str(folder))
    path = Path(source).expanduser()
    if not path.is_dir():
        raise StorageAccessError(
            f"model.source: {source}: no such folder (a local model or tokenizer folder)"
        )
    return _load(str(path))


def _load(name: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as e:
        raise InvalidConfigError(
            f"model.source: cannot load a tokenizer from {name}: {e}"
        ) from None
