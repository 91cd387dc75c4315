"""Resumable checkpoints under `<output.destination>/checkpoints/step-NNNNNN/`.

A checkpoint holds everything needed to continue as if never stopped:

    adapter_model.safetensors, adapter_config.json   the adapters (peft; loadable as is)
                                                     (method.type full: model.safetensors)
    optimizer.pt, scheduler.pt, [grad_scaler.pt]     their state dicts
    rng-rank-00000.pt, ...                           each rank's RNG states
    trainer_state.json                               step, epoch, data position, counters
    metrics.jsonl                                    the records up to this step
    COMPLETE                                         written last (see below)

Writing: every rank writes its part into a folder on the scratch volume (all ranks
of a pod share it), rank 0 uploads the folder, and only then writes `COMPLETE`,
which lists every file with its size. A checkpoint without `COMPLETE`, whether the
pod was killed mid-upload or the store lost a file, is never resumed from; a reader
checks the sizes too. Pruning deletes `COMPLETE` first, so a half-deleted
checkpoint is partial, never complete.

The data position is saved as "examples into the epoch"; with the seed and epoch
number it determines the exact next micro-batch (`sampling`).
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.contract import OutputLayout
from kubetune.trainer.errors import InvalidConfigError, StorageUnavailableError
from kubetune.trainer.model import is_peft_model, load_full_weights, save_full_weights
from kubetune.trainer.state import TrainState, restore_rng
from kubetune.trainer.storage import Storage, join_uri, parse_uri

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MARKER = OutputLayout.CHECKPOINT_MARKER
ADAPTER_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "grad_scaler.pt"
_STEP_FOLDER = re.compile(r"^step-(\d{6,})$")


def rng_file(rank: int) -> str:
    return f"rng-rank-{rank:05d}.pt"


@dataclass(frozen=True)
class Found:
    """A checkpoint at the destination."""

    step: int
    uri: str  # its folder, ending in '/'
    complete: bool


@dataclass
class TrainingObjects:
    """What a checkpoint saves and restores, besides the counters."""

    model: Any  # the PeftModel (unwrapped from DDP)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any | None = None  # torch.amp.GradScaler for fp16


class CheckpointStore:
    """The checkpoints of one run: find, save, load and prune them."""

    def __init__(self, storage: Storage, destination: str, scratch: Path, keep: int) -> None:
        self.storage = storage
        self.root = join_uri(destination, OutputLayout.CHECKPOINTS)
        self.scratch = scratch / "checkpoints"
        self.keep = keep

    # -- finding ----------------------------------------------------------------------

    def list(self) -> list[Found]:
        """Checkpoints at the destination, oldest first."""
        steps: dict[int, bool] = {}
        for info in self.storage.list_objects(self.root):
            folder, _, name = info.relative.partition("/")
            match = _STEP_FOLDER.match(folder)
            if match:
                step = int(match.group(1))
                steps[step] = steps.get(step, False) or name == MARKER
        return [Found(step, self._uri(step), complete) for step, complete in sorted(steps.items())]

    def latest_complete(self) -> Found | None:
        complete = [found for found in self.list() if found.complete]
        return complete[-1] if complete else None

    def complete_newest_first(self) -> builtins.list[Found]:
        """Every complete checkpoint, newest first: where resuming tries, in order."""
        return [found for found in reversed(self.list()) if found.complete]

    # -- saving -----------------------------------------------------------------------

    def local_folder(self, step: int) -> Path:
        return self.scratch / OutputLayout.checkpoint(step).rstrip("/").split("/")[-1]

    def save(
        self,
        step: int,
        objects: TrainingObjects,
        progress: TrainState,
        rng: dict[str, Any],
        *,
        rank: int,
        is_main: bool,
        barrier: Callable[[], None],
        extra_state: dict[str, Any],
        extra_files: tuple[Path, ...] = (),
        before_publish: Callable[[], None] = lambda: None,
        may_fail: bool = False,
    ) -> str | None:
        """Write the checkpoint of `step` (every rank calls this); returns its URI.

        `before_publish` runs on rank 0 just before the upload (the writer lease is
        renewed there). With `may_fail` (a periodic checkpoint), a store that stays
        unavailable through every retry costs this checkpoint only: it is logged, None
        is returned, and training goes on; the next checkpoint tries again. The final
        and the SIGTERM checkpoints are not allowed to fail that way.
        """
        import torch

        folder = self.local_folder(step)
        if is_main:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        barrier()
        torch.save(rng, folder / rng_file(rank))
        if is_main:
            if is_peft_model(objects.model):
                objects.model.save_pretrained(str(folder), safe_serialization=True)
                (folder / "README.md").unlink(missing_ok=True)  # peft's placeholder card
            else:  # method.type full: every weight
                save_full_weights(objects.model, folder)
            torch.save(objects.optimizer.state_dict(), folder / OPTIMIZER_FILE)
            torch.save(objects.scheduler.state_dict(), folder / SCHEDULER_FILE)
            if objects.scaler is not None:
                torch.save(objects.scaler.state_dict(), folder / SCALER_FILE)
            progress.save(folder, extra_state)
            for path in extra_files:
                if path.exists():
                    shutil.copyfile(path, folder / path.name)
        barrier()
        uri: str | None = self._uri(step)
        if is_main:
            try:
                before_publish()
                self._publish(folder, uri)  # type: ignore[arg-type]
                self.prune()
            except StorageUnavailableError as e:
                if not may_fail:
                    raise
                log.warning(
                    "checkpoint of step %d not saved, training goes on and the next "
                    "checkpoint tries again: %s",
                    step,
                    e,
                )
                uri = None
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        barrier()
        return uri

    def _publish(self, folder: Path, uri: str) -> None:
        # A partial checkpoint of the same step (from a pod killed while saving) may be
        # there: remove its marker-less files first so nothing stale mixes in.
        self._delete_folder(uri)
        files = {
            p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        self.storage.upload_dir(folder, uri)
        marker = {"step": int(uri.rstrip("/").rsplit("-", 1)[-1]), "files": files}
        self.storage.write_text(join_uri(uri, MARKER), json.dumps(marker, indent=1, sort_keys=True))
        log.info("checkpoint saved: %s", uri)

    def prune(self) -> None:
        """Keep the newest `keep` complete checkpoints; drop partial ones older than those."""
        found = self.list()
        complete = [f for f in found if f.complete]
        if not complete:
            return
        kept = {f.step for f in complete[-self.keep :]}
        newest = complete[-1].step
        for f in found:
            if f.step not in kept and (f.complete or f.step < newest):
                log.info("removing old checkpoint %s", f.uri)
                self._delete_folder(f.uri)

    def _delete_folder(self, uri: str) -> None:
        objects = self.storage.list_objects(uri)
        # The marker first: from here on the checkpoint is partial, never complete.
        objects.sort(key=lambda info: info.relative != MARKER)
        for info in objects:
            self.storage.delete(info.uri)
        location = parse_uri(uri)
        if isinstance(location, Path) and location.is_dir():
            shutil.rmtree(location, ignore_errors=True)  # local paths keep empty folders otherwise

    # -- loading ----------------------------------------------------------------------

    def download(self, found: Found) -> Path:
        """Fetch a complete checkpoint to the scratch volume and check it is whole."""
        folder = self.scratch / "resume" / f"step-{found.step:06d}"
        self.storage.download_prefix(found.uri, folder)
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        for name, size in marker["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != size:
                raise InvalidConfigError(
                    f"checkpoint {found.uri} is marked complete but {name} is missing or has the wrong "
                    "size; delete that checkpoint folder to resume from an older one"
                )
        return folder

    def _uri(self, step: int) -> str:
        return join_uri(self.root, f"step-{step:06d}/")


def load_checkpoint(
    folder: Path, objects: TrainingObjects, *, rank: int, device: torch.device
) -> tuple[TrainState, dict[str, Any]]:
    """Restore adapters, optimizer, scheduler, scaler and this rank's RNG from `folder`."""
    import torch

    if is_peft_model(objects.model):
        load_adapter_weights(objects.model, folder, device)
    else:
        load_full_weights(objects.model, folder, device)
    try:
        objects.optimizer.load_state_dict(
            torch.load(folder / OPTIMIZER_FILE, map_location=device, weights_only=True)
        )
    except ValueError as e:  # "loaded state dict contains a parameter group that doesn't match"
        raise InvalidConfigError(
            f"the checkpoint in {folder.name} does not fit this run's optimizer ({e}); use a new "
            "output.destination or delete its checkpoints/ to start over"
        ) from None
    objects.scheduler.load_state_dict(torch.load(folder / SCHEDULER_FILE, weights_only=True))
    if objects.scaler is not None and (folder / SCALER_FILE).exists():
        objects.scaler.load_state_dict(torch.load(folder / SCALER_FILE, weights_only=True))
    # A rank that did not exist when the checkpoint was made starts from rank 0's states.
    rng_path = folder / rng_file(rank)
    if not rng_path.exists():
        rng_path = folder / rng_file(0)
    restore_rng(torch.load(rng_path, weights_only=True))
    return TrainState.load(folder)


def load_adapter_weights(model: Any, folder: Path, device: torch.device) -> None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    different = InvalidConfigError(
        f"the checkpoint {folder.name} was made for different adapters (spec.method changed "
        "since?); use a new output.destination or delete its checkpoints/ to start over"
    )
    if not (folder / ADAPTER_WEIGHTS).exists():
        raise different  # a whole-model checkpoint (type full before)
    weights = load_file(str(folder / ADAPTER_WEIGHTS), device=str(device))
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError:  # "size mismatch for ...lora_A...": another rank r
        raise different from None
    lora_missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if getattr(result, "unexpected_keys", None) or lora_missing:
        raise different
