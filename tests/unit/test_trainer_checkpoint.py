"""Checkpoints at the destination: complete only with the marker, newest kept, partial never used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kubetune.trainer.checkpoint import MARKER, CheckpointStore, TrainingObjects, load_checkpoint
from kubetune.trainer.errors import InvalidConfigError
from kubetune.trainer.state import TrainState, capture_rng
from kubetune.trainer.storage import Storage


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def objects(seed: int = 0) -> TrainingObjects:
    """A real (tiny) PeftModel with a stepped AdamW and a scheduler."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(Net(), LoraConfig(r=2, target_modules=["lin"], init_lora_weights=False))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    return TrainingObjects(model=model, optimizer=optimizer, scheduler=scheduler)


def save(store: CheckpointStore, step: int) -> str:
    return store.save(
        step,
        objects(),
        TrainState(step=step, epoch=1, examples_into_epoch=8, tokens_total=100 * step),
        capture_rng(),
        rank=0,
        is_main=True,
        barrier=lambda: None,
        extra_state={"world_size": 1},
    )


def test_saving_writes_every_part_and_the_marker_listing_their_sizes(tmp_path: Path) -> None:
    store = CheckpointStore(Storage(), str(tmp_path / "out"), tmp_path / "scratch", keep=2)
    uri = save(store, 3)
    folder = tmp_path / "out" / "checkpoints" / "step-000003"
    assert uri == f"{folder}/"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [
            "COMPLETE",
            "adapter_config.json",
            "adapter_model.safetensors",
            "optimizer.pt",
            "rng-rank-00000.pt",
            "scheduler.pt",
            "trainer_state.json",
        ]
    )
    marker = json.loads((folder / MARKER).read_text())
    assert marker["step"] == 3
    assert marker["files"] == {
        p.name: p.stat().st_size for p in folder.iterdir() if p.name != MARKER
    }
    assert not (tmp_path / "scratch" / "checkpoints" / "step-000003").exists()  # staging cleaned


def test_a_folder_without_its_marker_is_partial_and_never_resumed_from(tmp_path: Path) -> None:
    store = CheckpointStore(Storage(), str(tmp_path / "out"), tmp_path / "scratch", keep=5)
    save(store, 2)
    save(store, 4)
    (tmp_path / "out" / "checkpoints" / "step-000004" / MARKER).unlink()  # killed while uploading
    found = store.list()
    assert [(f.step, f.complete) for f in found] == [(2, True), (4, False)]
    assert store.latest_complete().step == 2  # type: ignore[union-attr]


def test_only_the_newest_k_complete_checkpoints_are_kept(tmp_path: Path) -> None:
    store = CheckpointStore(Storage(), str(tmp_path / "out"), tmp_path / "scratch", keep=2)
    for step in (1, 2, 3, 4):
        save(store, step)
    assert [f.step for f in store.list()] == [3, 4]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "step-000003",
        "step-000004",
    ]


def test_pruning_removes_partial_checkpoints_older_than_the_newest_complete(tmp_path: Path) -> None:
    store = CheckpointStore(Storage(), str(tmp_path / "out"), tmp_path / "scratch", keep=3)
    save(store, 1)
    save(store, 2)
    (tmp_path / "out" / "checkpoints" / "step-000002" / MARKER).unlink()
    save(store, 3)
    assert [(f.step, f.complete) for f in store.list()] == [(1, True), (3, True)]


def test_saving_over_a_partial_checkpoint_of_the_same_step_replaces_it(tmp_path: Path) -> None:
    store = CheckpointStore(Storage(), str(tmp_path / "out"), tmp_path / "scratch", keep=3)
    stale = tmp_path / "out" / "checkpoints" / "step-000005"
    stale.mkdir(parents=True)
    (stale / "leftover.bin").write_bytes(b"x" * 10)
    save(store, 5)
    assert not (stale / "leftover.bin").exists()
    assert store.latest_complete().step == 5  # type: ignore[union-attr]


def test_loading_restores_adapters_optimizer_scheduler_rng_and_counters(tmp_path: Path) -> None:
    store = CheckpointStore(Storage(), str(tmp_path / "out"), tmp_path / "scratch", keep=2)
    saved = objects(seed=0)
    torch.manual_seed(123)
    rng = capture_rng()
    expected_draw = torch.rand(3)
    progress = TrainState(step=7, epoch=2, examples_into_epoch=4, tokens_total=900)
    store.save(
        7,
        saved,
        progress,
        rng,
        rank=0,
        is_main=True,
        barrier=lambda: None,
        extra_state={"world_size": 1},
    )
    folder = store.download(store.latest_complete())  # type: ignore[arg-type]

    fresh = objects(seed=1)  # different adapters, optimizer moments, scheduler position
    torch.manual_seed(999)
    loaded, extra = load_checkpoint(folder, fresh, rank=0, device=torch.device("cpu"))

    assert (loaded.step, loaded.epoch, loaded.examples_into_epoch, loaded.tokens_total) == (
        7,
        2,
        4,
        900,
    )
    assert extra["world_size"] == 1
    for (name, a), (_, b) in zip(
        saved.model.named_parameters(), fresh.model.named_parameters(), strict=True
    ):
        if a.requires_grad:
            torch.testing.assert_close(b, a, msg=name)
    for a, b in zip(saved.optimizer.state.values(), fresh.optimizer.state.values(), strict=True):
        torch.testing.assert_close(b["exp_avg"], a["exp_avg"])
    assert fresh.scheduler.state_dict()["last_epoch"] == saved.scheduler.state_dict()["last_epoch"]
    torch.testing.assert_close(torch.rand(3), expected_draw)  # the RNG continues where it was saved


def test_a_checkpoint_of_other_adapters_is_refused_with_a_way_out(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    store = CheckpointStore(Storage(), str(tmp_path / "out"), tmp_path / "scratch", keep=2)
    save(store, 1)
    folder = store.download(store.latest_complete())  # type: ignore[arg-type]
    other = objects()
    other.model = get_peft_model(Net(), LoraConfig(r=4, target_modules=["lin"]))
    with pytest.raises(
        InvalidConfigError, match=r"made for different adapters .* delete its checkpoints/"
    ):
        load_checkpoint(folder, other, rank=0, device=torch.device("cpu"))


def test_a_checkpoint_whose_files_do_not_match_the_marker_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(Storage(), str(tmp_path / "out"), tmp_path / "scratch", keep=2)
    save(store, 1)
    with open(tmp_path / "out" / "checkpoints" / "step-000001" / "optimizer.pt", "ab") as f:
        f.write(b"garbage")
    with pytest.raises(InvalidConfigError, match=r"optimizer\.pt is missing or has the wrong size"):
        store.download(store.latest_complete())  # type: ignore[arg-type]


def test_8bit_optimizer_state_survives_a_checkpoint(tmp_path: Path) -> None:
    # paged-adamw-8bit (GPU) keeps its state in bitsandbytes' 8-bit format; the same
    # optimizer class without paging runs on CPU, so the round trip is tested here.
    from kubetune.trainer.quantization import quiet_bitsandbytes_import

    quiet_bitsandbytes_import()
    import bitsandbytes as bnb

    parameter = torch.nn.Parameter(torch.randn(64, 64))
    optimizer = bnb.optim.AdamW8bit([parameter], lr=0.01, min_8bit_size=16)
    parameter.grad = torch.randn(64, 64)
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    restored = bnb.optim.AdamW8bit(
        [torch.nn.Parameter(parameter.detach().clone())], lr=0.01, min_8bit_size=16
    )
    restored.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    state, again = optimizer.state[parameter], next(iter(restored.state.values()))
    assert state["state1"].dtype == torch.uint8
    for key in ("state1", "state2", "absmax1", "absmax2"):
        torch.testing.assert_close(again[key], state[key])
