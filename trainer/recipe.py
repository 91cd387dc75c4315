"""`kubetune train`: one TuningJob, from base model and data to an adapter in S3.

The recipe, in the order a pod lives through it (phases as in the metrics):

    preflight     plan (device, precision, optimizer), output writable, model folder has weights
    downloading   the base model (s3:// cached on scratch, pvc://, hf://, local)
    preparing     the data pipeline: format → template → mask → tokenize → pack
    loading       tokenizer, quantized base model, LoRA adapters, optimizer, schedule;
                  resume from the latest complete checkpoint at the destination
    training      optimizer steps (`loop`), with evaluating and checkpointing every N steps
    evaluating    validation at the end, test split and exact match when configured
    uploading     metrics.jsonl, merged model (optional), adapter last

then a termination message with the adapter URI and the final metrics. SIGTERM at any
point during training saves a checkpoint at the last step boundary and exits with
`Preempted` (75); a retried pod resumes from it.

`train(job, options)` is the library entry point (tests call it in-process);
`kubetune.trainer.command.run_command` wraps it for the CLI with logging, signals, the
data-parallel launch and the termination message. The helpers live beside it:
`step_window` (steps → one metrics.jsonl record) and `training_data` (the prepared
data as the loop sees it).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kubetune.api.contract import METRICS_PORT, OutputLayout
from kubetune.api.v1alpha1 import TuningJob
from kubetune.trainer.auto import resolve as resolve_auto
from kubetune.trainer.checkpoint import CheckpointStore, TrainingObjects, load_checkpoint
from kubetune.trainer.distributed import (
    Dist,
    init_distributed,
    shutdown_distributed,
)
from kubetune.trainer.errors import (
    InvalidConfigError,
    Preempted,
    StorageAccessError,
    StorageUnavailableError,
)
from kubetune.trainer.evaluation import LossResult, evaluate_loss, exact_match
from kubetune.trainer.export import (
    upload_results,
    write_adapter,
    write_full_model,
    write_merged,
    write_model_card,
    write_summary,
)
from kubetune.trainer.logs import ProgressBar
from kubetune.trainer.loop import StepReport, StopRequested, StopSignal, TrainLoop, autocast_for
from kubetune.trainer.model_source import check_model_folder, fetch_model
from kubetune.trainer.ownership import (
    WriterLease,
    check_checkpoint_owner,
    claim_destination,
    run_identity,
)
from kubetune.trainer.plan import Hardware, TrainPlan, make_plan
from kubetune.trainer.quantization import quiet_bitsandbytes_import
from kubetune.trainer.sampling import Schedule
from kubetune.trainer.scratch import scratch_folder
from kubetune.trainer.state import TrainState, seed_everything
from kubetune.trainer.step_window import StepWindow, read_records
from kubetune.trainer.stopping import BestWeights, best_evaluation, early_stop_reason
from kubetune.trainer.storage import ByteCounter, Storage, join_uri
from kubetune.trainer.telemetry import Telemetry
from kubetune.trainer.training_data import PreparedSplits, prepare_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what to train: that is the TuningJob)."""

    scratch: Path | None = None  # default: $KUBETUNE_SCRATCH_DIR, else a cache folder per job
    metrics_port: int | None = METRICS_PORT  # None: no endpoint; 0: any free port


@dataclass(frozen=True)
class TrainResult:
    adapter_uri: str
    checkpoint_uri: str | None
    metrics: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)
    local_adapter: Path | None = None  # the exported folder on the scratch volume (rank 0)


def train(
    job: TuningJob,
    options: RunOptions | None = None,
    *,
    plan: TrainPlan | None = None,
    stop: StopSignal | None = None,
) -> TrainResult:
    """Train the adapter the TuningJob describes; see the module docs for the steps."""
    quiet_bitsandbytes_import()
    options = options or RunOptions()
    stop = stop or StopSignal()
    plan = plan or make_plan(job.spec, Hardware.probe())
    dist = init_distributed(plan.backend, plan.device_type)
    scratch = scratch_folder(job, options.scratch)
    telemetry = Telemetry(scratch / OutputLayout.METRICS, enabled=dist.is_main)
    try:
        if options.metrics_port is not None:
            telemetry.serve(options.metrics_port)
        return _Run(job, plan, dist, scratch, telemetry, stop).execute()
    finally:
        telemetry.close()
        shutdown_distributed()


class _Run:
    """One execution of the recipe; attributes are filled phase by phase."""

    def __init__(
        self,
        job: TuningJob,
        plan: TrainPlan,
        dist: Dist,
        scratch: Path,
        telemetry: Telemetry,
        stop: StopSignal,
    ) -> None:
        import torch

        self.job, self.spec, self.plan, self.dist = job, job.spec, plan, dist
        self.scratch, self.telemetry, self.stop = scratch, telemetry, stop
        self.training = job.spec.training
        self.destination = job.spec.output.destination
        self.device = torch.device(
            f"cuda:{dist.local_rank}" if plan.device_type == "cuda" else "cpu"
        )
        self.s3_bytes = ByteCounter()

        def count_bytes(direction: Literal["upload", "download"], amount: int) -> None:
            self.s3_bytes(direction, amount)
            telemetry.add_s3_bytes(direction, amount)

        self.storage = Storage(job.spec.s3, on_bytes=count_bytes)
        self.checkpoints = CheckpointStore(
            self.storage, self.destination, scratch, self.training.keep_checkpoints
        )
        self.last_checkpoint: str | None = None
        self.last_checkpoint_step = -1
        self.started = time.time()
        self.identity = run_identity(job)
        self.lease = WriterLease(self.storage, self.destination, self.identity)
        self.keep_best = self.training.export_best or self.training.early_stopping is not None
        self.best_weights = BestWeights(self.storage, self.destination, scratch)
        self.stopped_early: str | None = None
        self.choices: dict[str, Any] = {"chosen": {}, "notes": []}  # what auto chose, and why

    def execute(self) -> TrainResult:
        try:
            return self._execute()
        finally:
            if self.dist.is_main:
                self.lease.release()

    def _take_destination(self) -> None:
        """Make the destination this run's and this process its only writer (ownership)."""
        claim_destination(self.storage, self.destination, self.identity)
        self.lease.acquire()
        self.lease.keep_renewing()
        # Holding the lease, any unfinished multipart upload here is a killed pod's.
        for key in self.storage.abort_uploads(self.destination):
            log.info("aborted an unfinished upload left by an earlier attempt: %s", key)

    def _execute(self) -> TrainResult:
        if self.dist.is_main:
            for note in self.plan.notes:
                log.info("%s", note)
            log.info("plan: %s", json.dumps(asdict(self.plan), default=str))
            # Before anything expensive: a destination we cannot write fails now, not after training.
            self.storage.check_writable(self.destination)
            self._take_destination()
        seed_everything(self.training.seed)

        self.telemetry.set_phase("downloading")
        model_folder = self._on_main_first(
            lambda: fetch_model(self.spec.model, self.storage, self.scratch)
        )
        check_model_folder(model_folder, self.spec.model.source)
        self._check_stop()

        from kubetune.trainer.model import load_model
        from kubetune.trainer.tokenizer import load_tokenizer, needs_pad_token

        tokenizer = load_tokenizer(
            model_folder, self.spec.model.source, needs_pad=needs_pad_token(self.training)
        )

        self.telemetry.set_phase("preparing")
        data = self._on_main_first(
            lambda: prepare_data(self.job, self.scratch / "data", tokenizer, self.storage)
        )
        if data.packing_efficiency is not None:
            self.telemetry.packing_efficiency.set(data.packing_efficiency)
        if self.dist.is_main and data.report is not None:
            report_uri = join_uri(self.destination, OutputLayout.PREPARE_REPORT)
            self.storage.write_text(report_uri, json.dumps(data.report, indent=2) + "\n")
        self._choose_auto(data)
        self._check_stop()

        self.telemetry.set_phase("loading")
        init_adapter = None
        if self.spec.method.init_adapter is not None:
            from kubetune.trainer.adapters import fetch_init_adapter

            uri = self.spec.method.init_adapter
            init_adapter = self._on_main_first(
                lambda: fetch_init_adapter(uri, self.storage, self.scratch)
            )
        model = load_model(
            model_folder,
            self.spec.model.source,
            self.plan,
            self.spec.method,
            self.device,
            self.training.seed,
            init_adapter=init_adapter,
        )
        schedule = Schedule(
            len(data.train),
            self.dist.world_size,
            _chosen(self.training.batch_size),
            _chosen(self.training.gradient_accumulation),
        )
        total_steps = schedule.total_steps(_chosen(self.training.epochs), self.training.max_steps)
        objects = self._training_objects(model, total_steps)
        progress = self._resume(objects)
        if progress.step == 0 and self.dist.rank > 0:
            # Different dropout masks per rank (the same seed everywhere gave the same adapters).
            seed_everything(self.training.seed + self.dist.rank)
        self._check_stop()
        train_model = self._wrap(model)

        self.telemetry.total_steps.set(total_steps)
        self.telemetry.step.set(progress.step)
        if self.dist.is_main:
            log.info(
                "training: %s examples in %d %s, %d steps (%d per epoch), from step %d",
                data.summary.get("train examples"),
                len(data.train),
                "packed rows" if self.training.packing else "rows",
                total_steps,
                schedule.steps_per_epoch,
                progress.step,
            )
        loop = TrainLoop(
            model=train_model,
            optimizer=objects.optimizer,
            scheduler=objects.scheduler,
            scaler=objects.scaler,
            plan=self.plan,
            training=self.training,
            train_split=data.train,
            collate=data.collate,
            schedule=schedule,
            total_steps=total_steps,
            dist=self.dist,
            device=self.device,
            stop=self.stop,
            progress=progress,
            lengths=data.lengths if not self.training.packing else None,
        )
        self._train(loop, objects, data, model)

        # The end: final evaluation, test split, export, upload.
        metrics = self._final_evaluation(model, tokenizer, data, loop)
        summary = self._summary(progress, total_steps, schedule, metrics, data)
        adapter_uri, local_adapter = self._export(model, tokenizer, model_folder, summary)
        self.dist.barrier()
        log.info("done: adapter at %s", adapter_uri)
        return TrainResult(adapter_uri, self.last_checkpoint, metrics, summary, local_adapter)

    # -- phases -------------------------------------------------------------------------

    def _choose_auto(self, data: PreparedSplits) -> None:
        """Replace the spec's auto hyperparameters by values chosen from the prepared data."""
        report = data.report or {}
        examples = report.get("splits", {}).get("train", {}).get("examples", len(data.train))
        resolved = resolve_auto(self.training, self.spec.method.type, examples, len(data.train))
        self.training = resolved.training
        self.spec = self.spec.model_copy(update={"training": resolved.training})
        self.job = self.job.model_copy(update={"spec": self.spec})
        self.choices = {
            "chosen": resolved.chosen,
            "notes": [*report.get("choices", []), *resolved.notes],
        }
        if self.dist.is_main:
            for note in resolved.notes:
                log.warning("%s", note)

    def _training_objects(self, model: Any, total_steps: int) -> TrainingObjects:
        import torch
        from transformers import get_scheduler

        parameters = [p for p in model.parameters() if p.requires_grad]
        lr, decay = self.training.learning_rate, self.training.weight_decay
        if self.plan.optimizer == "paged-adamw-8bit":
            import bitsandbytes as bnb

            optimizer = bnb.optim.PagedAdamW8bit(parameters, lr=lr, weight_decay=decay)
        else:
            optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=decay)
        name = {"constant": "constant_with_warmup"}.get(
            self.training.lr_scheduler, self.training.lr_scheduler
        )
        scheduler = get_scheduler(
            name,
            optimizer,
            num_warmup_steps=math.ceil(self.training.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )
        scaler = torch.amp.GradScaler("cuda") if self.plan.compute_dtype == "fp16" else None
        return TrainingObjects(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)

    def _resume(self, objects: TrainingObjects) -> TrainState:
        """Load the newest usable complete checkpoint at the destination; else start fresh."""
        found = self.dist.broadcast_object(self._usable_checkpoint() if self.dist.is_main else None)
        if found is None:
            if self.dist.is_main:
                self.telemetry.metrics_file.unlink(missing_ok=True)  # type: ignore[union-attr]
                self.checkpoints.prune()  # partial leftovers of an earlier attempt
                if self.keep_best:
                    self.best_weights.clear()  # another run's
            return TrainState()
        folder = self._on_main_first(lambda: self.checkpoints.download(found))
        progress, extra = load_checkpoint(folder, objects, rank=self.dist.rank, device=self.device)
        check_checkpoint_owner(extra, self.identity, found.uri)
        self.last_checkpoint, self.last_checkpoint_step = found.uri, progress.step
        if self.dist.is_main:
            log.info(
                "resumed from %s (step %d, epoch %d)", found.uri, progress.step, progress.epoch
            )
            self._restore_metrics_file(folder, progress.step)
        if extra.get("world_size") not in (None, self.dist.world_size):
            log.warning(
                "the checkpoint was made by %s processes, this run has %d: the data order differs from there on",
                extra["world_size"],
                self.dist.world_size,
            )
        return progress

    def _usable_checkpoint(self) -> Any:
        """The newest complete checkpoint that downloads whole (rank 0).

        A newest checkpoint that is damaged or vanished (a file lost, deleted by hand)
        costs its interval, not the run: the next older complete one is used, which is
        what keepCheckpoints keeps it for. Its download stays on the scratch volume,
        so _resume's own download of it is a cache hit.
        """
        for found in self.checkpoints.complete_newest_first():
            try:
                self.checkpoints.download(found)
                return found
            except (InvalidConfigError, StorageAccessError) as e:
                log.warning("cannot resume from %s (%s); trying an older checkpoint", found.uri, e)
        return None

    def _restore_metrics_file(self, checkpoint: Path, step: int) -> None:
        """Continue metrics.jsonl from the copy inside the checkpoint: exactly its steps."""
        path = self.telemetry.metrics_file
        assert path is not None
        saved = checkpoint / OutputLayout.METRICS
        if saved.exists():
            shutil.copyfile(saved, path)
            self.telemetry.truncate_records_after(step)
        else:
            path.unlink(missing_ok=True)

    def _wrap(self, model: Any) -> Any:
        if not self.dist.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model,
            device_ids=[self.dist.local_rank] if self.plan.device_type == "cuda" else None,
            find_unused_parameters=False,
        )

    def _train(
        self, loop: TrainLoop, objects: TrainingObjects, data: PreparedSplits, model: Any
    ) -> None:
        progress, training = loop.progress, self.training
        self.telemetry.set_phase("training")
        bar = ProgressBar(loop.total_steps, progress.step, enabled=self.dist.is_main)
        window = StepWindow()
        # A run that stopped early and is started again (its pod lost during export) stays
        # stopped: its checkpoint is at the stop step, and the decision reads the same records.
        self.stopped_early = early_stop_reason(progress.evaluations, training.early_stopping)
        if self.stopped_early:
            if self.dist.is_main:
                log.info("%s (decided before this attempt)", self.stopped_early)
            bar.close()
            return
        if progress.step == 0 and data.validation is not None:
            # The baseline: how much the run improved is measured against it.
            self._evaluate_validation(model, data, loop)
            self._after_evaluation(model, loop)
            self.telemetry.set_phase("training")
        try:
            for step in loop.steps():
                window.add(step)
                self._record_step(step, loop)
                bar.update(step.loss, window.last_rate)
                if step.step % training.log_every == 0 or step.step == loop.total_steps:
                    self._log_window(window, loop)
                if data.validation is not None and step.step % training.eval_every == 0:
                    self._evaluate_validation(model, data, loop)
                    self.stopped_early = self._after_evaluation(model, loop)
                if step.step % training.checkpoint_every == 0:
                    self._checkpoint(loop, objects, periodic=True)
                self.telemetry.set_phase("training")
                if self.stopped_early:
                    if window.steps:
                        self._log_window(window, loop)
                    if self.dist.is_main:
                        log.info("%s", self.stopped_early)
                    break
        except StopRequested:
            bar.close()
            if self.last_checkpoint_step != progress.step:
                self._checkpoint(loop, objects, rng=loop.boundary_rng)
            raise Preempted(
                f"stopped by {self.stop.reason} at step {progress.step} of {loop.total_steps}; "
                f"checkpoint saved to {self.last_checkpoint}; a new attempt resumes from it",
                checkpoint=self.last_checkpoint,
            ) from None
        finally:
            bar.close()
        # Always end on a checkpoint: a pod lost during export resumes here, not earlier.
        if self.last_checkpoint_step != progress.step:
            self._checkpoint(loop, objects)

    def _after_evaluation(self, model: Any, loop: TrainLoop) -> str | None:
        """Keep the best weights (exportBest, earlyStopping); say whether to stop early."""
        evaluations = loop.progress.evaluations
        if not evaluations or evaluations[-1]["step"] != loop.progress.step:
            return None  # interrupted by a stop: the loop checkpoints next
        if self.keep_best and self.dist.is_main:
            best = best_evaluation(evaluations)
            saved = self.best_weights.saved()
            if best is not None and best.step == loop.progress.step and saved != best:
                self.best_weights.save(model, best)
        self.dist.barrier()
        return early_stop_reason(evaluations, self.training.early_stopping)

    def _record_step(self, step: StepReport, loop: TrainLoop) -> None:
        t = self.telemetry
        t.step.set(step.step)
        t.epoch.set(loop.epochs_done())
        t.loss.set(step.loss)
        t.learning_rate.set(step.learning_rate)
        t.grad_norm.set(step.grad_norm)
        t.tokens.inc(step.input_tokens)
        t.record_gpu_memory()

    def _log_window(self, window: StepWindow, loop: TrainLoop) -> None:
        record = window.flush(loop)
        self.telemetry.tokens_per_second.set(record["tokens_per_second"])
        self.telemetry.write_record(record)
        if self.dist.is_main:
            log.info(
                "step %d/%d loss %.4f token-accuracy %.3f lr %.3g grad-norm %.3f %.0f tokens/s",
                record["step"],
                loop.total_steps,
                record["loss"],
                record["token_accuracy"],
                record["learning_rate"],
                record["grad_norm"],
                record["tokens_per_second"],
                extra={"fields": record},
            )

    def _evaluate_validation(
        self, model: Any, data: PreparedSplits, loop: TrainLoop
    ) -> LossResult | None:
        assert data.validation is not None
        self.telemetry.set_phase("evaluating")
        result = evaluate_loss(
            model,
            data.validation,
            data.collate,
            batch_size=_chosen(self.training.batch_size),
            dist=self.dist,
            device=self.device,
            autocast=autocast_for(self.plan),
            stop=self.stop,
        )
        if result is None:  # a stop arrived: the loop checkpoints at its next check
            return None
        step = loop.progress.step
        record = {
            "kind": "eval",
            "step": step,
            "epoch": round(loop.epochs_done(), 4),
            **result.as_metrics("eval"),
        }
        loop.progress.evaluations.append(record)
        self.telemetry.eval_loss.set(result.loss)
        self.telemetry.write_record(record)
        if self.dist.is_main:
            log.info(
                "step %d eval loss %.4f perplexity %.3f token-accuracy %.3f",
                step,
                result.loss,
                result.perplexity,
                result.token_accuracy,
                extra={"fields": record},
            )
        return result

    def _checkpoint(
        self,
        loop: TrainLoop,
        objects: TrainingObjects,
        rng: dict[str, Any] | None = None,
        *,
        periodic: bool = False,
    ) -> None:
        from kubetune.trainer.state import capture_rng

        self.telemetry.set_phase("checkpointing")
        step = loop.progress.step
        extra = {
            "world_size": self.dist.world_size,
            "total_steps": loop.total_steps,
            "seed": self.training.seed,
            "run": self.identity.as_record(),  # a resume checks who made it
        }
        saved = self.checkpoints.save(
            step,
            objects,
            loop.progress,
            rng if rng is not None else capture_rng(),
            rank=self.dist.rank,
            is_main=self.dist.is_main,
            barrier=self.dist.barrier,
            extra_state=extra,
            # The records so far travel with the checkpoint: a resumed run continues them
            # even when the pod died before the top-level metrics.jsonl was updated.
            extra_files=(self.telemetry.metrics_file,) if self.telemetry.metrics_file else (),
            before_publish=self.lease.renew,
            may_fail=periodic,
        )
        if saved is None:
            return  # a periodic checkpoint the store did not take: the next one tries again
        self.last_checkpoint, self.last_checkpoint_step = saved, step
        if (
            self.dist.is_main
            and self.telemetry.metrics_file is not None
            and self.telemetry.metrics_file.exists()
        ):
            try:
                self.storage.upload_file(
                    self.telemetry.metrics_file, join_uri(self.destination, OutputLayout.METRICS)
                )
            except StorageUnavailableError as e:
                if not periodic:
                    raise
                log.warning("metrics.jsonl not uploaded (the next checkpoint tries again): %s", e)

    def _final_evaluation(
        self, model: Any, tokenizer: Any, data: PreparedSplits, loop: TrainLoop
    ) -> dict[str, float]:
        progress = loop.progress
        metrics: dict[str, float] = {
            "steps": float(progress.step),
            "epochs": round(loop.epochs_done(), 4),
        }
        train_records = [
            r for r in read_records(self.telemetry.metrics_file) if r.get("kind") == "train"
        ]
        if train_records:
            metrics["train_loss"] = train_records[-1]["loss"]
            if "token_accuracy" in train_records[-1]:
                metrics["train_token_accuracy"] = train_records[-1]["token_accuracy"]
        # The values auto chose travel to the status with the termination message.
        for name, value in self.choices["chosen"].items():
            metrics[f"chosen_{_snake(name)}"] = float(value)
        if progress.train_seconds > 0:
            metrics["tokens_per_second"] = round(progress.tokens_total / progress.train_seconds, 2)
        if self.plan.device_type == "cuda":
            import torch

            metrics["gpu_peak_memory_bytes"] = float(torch.cuda.max_memory_allocated(self.device))
        if data.validation is not None:
            last = progress.evaluations[-1] if progress.evaluations else None
            if last is None or last["step"] != progress.step:
                self._evaluate_validation(model, data, loop)
            if progress.evaluations:
                metrics.update(
                    {k: v for k, v in progress.evaluations[-1].items() if k.startswith("eval_")}
                )
                if progress.evaluations[0]["step"] == 0:
                    metrics["eval_loss_initial"] = progress.evaluations[0]["eval_loss"]
        if data.test is not None:
            self.telemetry.set_phase("evaluating")
            result = evaluate_loss(
                model,
                data.test,
                data.collate,
                batch_size=_chosen(self.training.batch_size),
                dist=self.dist,
                device=self.device,
                autocast=autocast_for(self.plan),
            )
            assert result is not None
            metrics.update(result.as_metrics("test"))
            if self.training.eval_exact_match:
                metrics.update(
                    exact_match(model, tokenizer, data.test, dist=self.dist, device=self.device)
                )
            record = {
                "kind": "test",
                "step": progress.step,
                **{k: v for k, v in metrics.items() if k.startswith("test_")},
            }
            self.telemetry.write_record(record)
            if self.dist.is_main:
                log.info(
                    "test: %s",
                    ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k.startswith("test_")),
                    extra={"fields": record},
                )
        return metrics

    def _summary(
        self,
        progress: TrainState,
        total_steps: int,
        schedule: Schedule,
        metrics: dict[str, float],
        data: PreparedSplits,
    ) -> dict[str, Any]:
        import peft
        import torch
        import transformers

        return {
            "job": {"name": self.job.metadata.name, "namespace": self.job.metadata.namespace},
            "run": self.identity.as_record(),  # which run made this adapter (ownership)
            "base_model": self.spec.model.source,
            "dataset": self.spec.dataset.source,
            "method": self.spec.method.model_dump(by_alias=True),
            "training": self.training.model_dump(by_alias=True),
            "plan": asdict(self.plan),
            "steps": progress.step,
            "total_steps": total_steps,
            "steps_per_epoch": schedule.steps_per_epoch,
            "epochs": round(progress.step / schedule.steps_per_epoch, 4),
            "tokens_total": progress.tokens_total,
            "trained_tokens_total": progress.trained_tokens_total,
            "train_seconds": round(progress.train_seconds, 2),
            "wall_seconds": round(time.time() - self.started, 2),
            "metrics": metrics,
            "evaluations": progress.evaluations,
            "chosen": self.choices,
            "stopped_early": self.stopped_early,
            "data": data.summary,
            "s3_bytes": self.s3_bytes.totals,  # up to the export (the final upload comes after)
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "kubetune": _kubetune_version(),
            },
        }

    def _export(
        self, model: Any, tokenizer: Any, model_folder: Path, summary: dict[str, Any]
    ) -> tuple[str, Path | None]:
        result_folder = (
            OutputLayout.MODEL if self.spec.method.type == "full" else OutputLayout.ADAPTER
        )
        adapter_uri = join_uri(self.destination, result_folder)
        if not self.dist.is_main:
            return adapter_uri, None
        self.telemetry.set_phase("uploading")
        if self.keep_best:
            self._load_best(model, summary)
        export = self.scratch / "export"
        if self.spec.method.type == "full":
            adapter = write_full_model(model, tokenizer, export / "model")
        else:
            adapter = write_adapter(model, tokenizer, export / "adapter", self.spec.model.source)
        write_summary(adapter, summary)
        write_model_card(adapter, self.job, summary)
        merged = None
        if self.spec.method.merge_adapter:
            merged = write_merged(
                adapter, model_folder, export / "merged", self.plan.compute_dtype, str(self.device)
            )
        if self.telemetry.metrics_file is not None and self.telemetry.metrics_file.exists():
            self.storage.upload_file(
                self.telemetry.metrics_file, join_uri(self.destination, OutputLayout.METRICS)
            )
        self.lease.renew()  # still the only writer: then the adapter goes up
        adapter_uri = upload_results(self.storage, adapter, self.destination, merged=merged)
        return adapter_uri, adapter

    def _load_best(self, model: Any, summary: dict[str, Any]) -> None:
        """Put the best evaluation's weights into `model` for export, and say so in the summary."""
        saved = self.best_weights.saved()
        if saved is None:
            return
        if saved.step != summary["steps"]:
            self.best_weights.restore(model, self.device)
        summary["exported"] = {"step": saved.step, "eval_loss": saved.eval_loss, "best": True}
        summary["metrics"]["exported_step"] = float(saved.step)
        summary["metrics"]["exported_eval_loss"] = saved.eval_loss

    def _check_stop(self) -> None:
        """Before training starts there is nothing to save: a stop just ends the attempt."""
        if self.dist.any(self.stop.requested, self.device):
            raise Preempted(
                f"stopped by {self.stop.reason or 'a signal'} before training started; nothing to save"
            )

    def _on_main_first(self, action: Callable[[], Any]) -> Any:
        """Run on rank 0 first (downloads, data preparation), then on the others (cache hits)."""
        result = action() if self.dist.is_main else None
        self.dist.barrier()
        if not self.dist.is_main:
            result = action()
        return result


def _kubetune_version() -> str:
    from kubetune import __version__

    return __version__


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _chosen(value: int | float | Literal["auto"]) -> Any:
    """A hyperparameter after `_Run._choose_auto`, which replaces every auto by a value."""
    if value == "auto":
        raise RuntimeError("a hyperparameter is still auto: _choose_auto runs before training")
    return value
