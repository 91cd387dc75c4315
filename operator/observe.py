"""Status computation: pure functions of the TuningJob, its Job, its Pods and metrics.

`observe(tuningjob, job, pods)` says what phase the run is in and why, in words taken
from Kubernetes itself where it has them (the scheduler's reason for a pending pod, a
container's waiting reason) and from the trainer's exit code and termination message
when it ends. `next_status(old, observation, ...)` folds that into the status: the
phase, conditions whose lastTransitionTime moves only when their status does, times,
restarts, progress and outputs. Nothing here calls the API or reads the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from kubetune.api.contract import ExitCode, OutputLayout, TerminationMessage
from kubetune.api.status import (
    MESSAGE,
    Chosen,
    Condition,
    ConditionStatus,
    ConditionType,
    Output,
    Phase,
    Progress,
    TuningJobStatus,
)
from kubetune.api.v1alpha1 import TuningJob
from kubetune.operator.builders import CONTAINER
from kubetune.operator.progress import decimal_string

Body = Mapping[str, Any]


@dataclass(frozen=True)
class Observation:
    """What the run is doing now, before it is folded into the status."""

    phase: Phase
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    restarts: int = 0
    # The uids of the failed trainer pods visible now. A pod whose failure the Job's
    # podFailurePolicy ignores (preemption) is not in the Job's `failed` count, and the
    # Job controller removes it once replaced: the reconciler counts it while it is seen.
    failed_pods: frozenset[str] = frozenset()
    adapter: str | None = None
    checkpoint: str | None = None
    final_metrics: Mapping[str, float] = field(default_factory=dict)
    running_pod: Body | None = None  # the pod whose metrics give progress


class _Common(TypedDict):
    """What every observation of a started Job carries."""

    start_time: str | None
    restarts: int
    failed_pods: frozenset[str]
    checkpoint: str | None


def validating(observation: Observation) -> Observation:
    """The phase of a TuningJob whose Validating step runs (`observe` of that step's Job).

    Succeeded passes through (the GPU Job comes next); a failure fails the TuningJob
    with the step's own reason and message (BadData with file, line and field); a
    suspended step stays Suspended; anything else is phase Validating, with the pod's
    own reason while it waits (Unschedulable, CreateContainerConfigError, ...).
    """
    obs = observation
    if obs.phase == "Succeeded":
        return obs
    if obs.phase == "Failed":
        return Observation(
            "Failed",
            obs.reason,
            f"the Validating step (no GPU was requested): {obs.message}",
            completion_time=obs.completion_time,
        )
    if obs.phase in ("Suspended", "Queued"):
        return Observation(obs.phase, obs.reason, obs.message)
    if obs.phase == "Running" and obs.reason == "Training":
        pod = _get(obs.running_pod, "metadata", "name")
        return Observation(
            "Validating",
            "PreparingData",
            f"pod {pod} checks and prepares the dataset on CPU; no GPU is requested until it succeeds",
        )
    return Observation("Validating", obs.reason, obs.message.replace("trainer pod", "pod"))


def invalid_spec(message: str, reason: str = "InvalidSpec") -> Observation:
    return Observation("Failed", reason, message)


def observe(tuningjob: TuningJob, job: Body, pods: Sequence[Body]) -> Observation:
    """The phase of a TuningJob whose Job exists."""
    spec = tuningjob.spec
    pods = sorted(pods, key=lambda p: _get(p, "metadata", "creationTimestamp") or "")
    job_status = job.get("status") or {}
    true_conditions = {
        c.get("type"): c for c in job_status.get("conditions") or [] if c.get("status") == "True"
    }
    failed_pods = [p for p in pods if _get(p, "status", "phase") == "Failed"]
    common = _Common(
        start_time=_first_start(pods),
        restarts=max(int(job_status.get("failed") or 0), len(failed_pods)),
        failed_pods=frozenset(str(_get(p, "metadata", "uid")) for p in failed_pods),
        checkpoint=_latest_checkpoint(pods),
    )

    done = true_conditions.get("Complete") or true_conditions.get("SuccessCriteriaMet")
    if done:
        message = _termination(_last(p for p in pods if _get(p, "status", "phase") == "Succeeded"))
        adapter = (message.adapter if message else None) or _join(
            spec.output.destination, OutputLayout.ADAPTER
        )
        return Observation(
            "Succeeded",
            "Succeeded",
            # method.type full exports a whole model (OutputLayout.MODEL) instead of an adapter.
            f"the {'model' if adapter.endswith(OutputLayout.MODEL) else 'adapter'} is at {adapter}",
            completion_time=job_status.get("completionTime") or done.get("lastTransitionTime"),
            adapter=adapter,
            final_metrics=dict(message.metrics) if message else {},
            **common,
        )

    failed = true_conditions.get("Failed") or true_conditions.get("FailureTarget")
    if failed:
        reason, text = _failure(tuningjob, failed, failed_pods)
        return Observation(
            "Failed", reason, text, completion_time=failed.get("lastTransitionTime"), **common
        )

    if (job.get("spec") or {}).get("suspend"):
        if spec.suspend:
            return Observation(
                "Suspended",
                "Suspended",
                "suspended by spec.suspend; set it to false to resume from the latest checkpoint",
                **common,
            )
        if spec.scheduling.queue_name:
            return Observation(
                "Queued",
                "WaitingForAdmission",
                f"waiting for Kueue to admit the Job from LocalQueue {spec.scheduling.queue_name!r}",
                **common,
            )
        return Observation("Pending", "Resuming", "the Job is being resumed", **common)

    active = [p for p in pods if _get(p, "status", "phase") in ("Pending", "Running", None)]
    pod = _last(p for p in active if not _get(p, "metadata", "deletionTimestamp")) or _last(active)
    if pod is not None:
        return _pod_observation(pod, common)
    ended = _last(p for p in pods if _get(p, "status", "phase") in ("Succeeded", "Failed"))
    if ended is not None:
        return _between_pods(ended, common)
    return Observation(
        "Pending",
        "PodCreating",
        "waiting for the Job controller to create the trainer pod",
        **common,
    )


def _between_pods(pod: Body, common: _Common) -> Observation:
    """The trainer pod has ended and the Job has not said what follows yet.

    The Job's verdict (Complete, Failed, or a new pod) comes a moment later, from the
    Job controller. Until then a run whose trainer ran is still Running: going back to
    Pending would say that it waits for resources, which it does not (yet). Pending
    returns only with a new pod that waits for real.
    """
    phase: Phase = "Running" if _ran(pod) else "Pending"
    if _get(pod, "status", "phase") == "Succeeded" or _exit_code(pod) == 0:
        name = _get(pod, "metadata", "name")
        return Observation(
            phase,
            "Completing",
            f"trainer pod {name} finished; waiting for the Job to complete",
            **common,
        )
    code = _exit_code(pod)
    if code is not None and code in {c.value for c in ExitCode} and ExitCode(code).permanent:
        return Observation(
            phase, "Failing", f"{_ended(pod)}; the Job fails without retrying", **common
        )
    return Observation(
        phase, "Restarting", f"{_ended(pod)}; the Job starts a new trainer pod", **common
    )


def _ran(pod: Body) -> bool:
    """Whether the pod's trainer started: it exited with a code, or the pod succeeded."""
    return _exit_code(pod) is not None or _get(pod, "status", "phase") == "Succeeded"


def _pod_observation(pod: Body, common: _Common) -> Observation:
    name = _get(pod, "metadata", "name")
    node = _get(pod, "spec", "nodeName")
    state = _container_state(pod)
    if _get(pod, "status", "phase") == "Running" and "running" in state:
        return Observation(
            "Running",
            "Training",
            f"trainer pod {name} is running on node {node}",
            running_pod=pod,
            **common,
        )
    if _get(pod, "metadata", "deletionTimestamp"):
        # Preempted, evicted or drained: its trainer checkpoints and exits, then the Job
        # starts a new pod. A pod that never ran was only waiting.
        phase: Phase = "Running" if _ran(pod) else "Pending"
        return Observation(
            phase,
            "Restarting",
            f"trainer pod {name} is stopping; the Job then starts a new one",
            **common,
        )
    if "terminated" in state:
        # A kubelet reports the container's end a moment before the pod's phase (seen in
        # kind): the trainer ran and ended, as after the pod's own phase has followed.
        return _between_pods(pod, common)
    scheduled = next(
        (c for c in _get(pod, "status", "conditions") or [] if c.get("type") == "PodScheduled"),
        None,
    )
    if scheduled is None or (scheduled.get("status") != "True" and not node):
        if scheduled is not None and scheduled.get("message"):
            # The scheduler's own words, e.g. "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
            return Observation(
                "Pending",
                scheduled.get("reason") or "Unschedulable",
                f"{scheduled['message']}",
                **common,
            )
        return Observation(
            "Pending", "Scheduling", f"trainer pod {name} waits for the scheduler", **common
        )
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason") or "ContainerCreating"
    detail = f": {waiting['message']}" if waiting.get("message") else ""
    return Observation(
        "Pending", reason, f"trainer pod {name} on node {node}: {reason}{detail}", **common
    )


def _failure(tuningjob: TuningJob, condition: Body, failed_pods: Sequence[Body]) -> tuple[str, str]:
    job_reason = condition.get("reason") or "Failed"
    last = failed_pods[-1] if failed_pods else None
    if job_reason == "PodFailurePolicy":
        for pod in reversed(failed_pods):
            code = _exit_code(pod)
            if (
                code is not None
                and code in {c.value for c in ExitCode}
                and ExitCode(code).permanent
            ):
                message = _termination(pod)
                text = message.message if message and message.message else _ended(pod)
                return ExitCode(code).reason, text
    if job_reason == "BackoffLimitExceeded":
        limit = tuningjob.spec.runtime.backoff_limit
        detail = f"; the last: {_ended(last)}" if last is not None else ""
        return (
            "BackoffLimitExceeded",
            f"the trainer failed {len(failed_pods)} time(s), more than runtime.backoffLimit ({limit}) allows{detail}",
        )
    if job_reason == "DeadlineExceeded":
        deadline = tuningjob.spec.runtime.active_deadline_seconds
        return (
            "DeadlineExceeded",
            f"the run took longer than runtime.activeDeadlineSeconds ({deadline}s)",
        )
    return job_reason, condition.get("message") or (f"the Job failed: {job_reason}")


def _ended(pod: Body | None) -> str:
    """One pod's end, in words: its exit code's meaning and the trainer's message."""
    if pod is None:
        return "the trainer pod failed"
    name = _get(pod, "metadata", "name")
    code = _exit_code(pod)
    message = _termination(pod)
    if code is None:
        reason = _get(pod, "status", "reason") or "Failed"
        text = _get(pod, "status", "message") or ""
        return f"trainer pod {name} failed ({reason}){': ' + text if text else ''}"
    words = ExitCode(code).reason if code in {c.value for c in ExitCode} else "TrainerError"
    if message and message.message:
        detail = message.message
    else:
        raw = ((_container_state(pod).get("terminated") or {}).get("message") or "").strip()
        detail = raw.splitlines()[-1] if raw else ""
    return f"trainer pod {name} exited with code {code} ({words}){': ' + detail if detail else ''}"


def next_status(
    old: TuningJobStatus | None,
    observation: Observation,
    *,
    generation: int,
    job_name: str | None,
    progress: Progress | None,
    now: str,
) -> TuningJobStatus:
    old = old or TuningJobStatus()
    obs = observation
    message = _clip(obs.message)

    wanted: dict[ConditionType, tuple[ConditionStatus, str, str]] = {
        "Suspended": ("True", obs.reason, message)
        if obs.phase in ("Suspended", "Queued")
        else ("False", "NotSuspended", ""),
        "Running": ("True", obs.reason, message)
        if obs.phase == "Running"
        else ("False", obs.reason, message),
    }
    if obs.phase in ("Succeeded", "Failed"):
        wanted[obs.phase] = ("True", obs.reason, message)
    conditions = []
    for type_, (status, reason, text) in wanted.items():
        previous = old.condition(type_)
        conditions.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=text,
                last_transition_time=(
                    previous.last_transition_time
                    if previous is not None and previous.status == status
                    else now
                ),
                observed_generation=generation,
            )
        )

    progress = progress or old.progress
    if obs.phase == "Succeeded":
        progress = _final_progress(progress, obs.final_metrics)
    elif progress is not None and obs.running_pod is None:
        progress = progress.model_copy(update={"eta": None})  # no trainer runs: no pace

    adapter = obs.adapter or (old.output.adapter if old.output else None)
    checkpoint = obs.checkpoint or (old.output.checkpoint if old.output else None)
    output = Output(adapter=adapter, checkpoint=checkpoint) if adapter or checkpoint else None

    return TuningJobStatus(
        phase=obs.phase,
        reason=obs.reason,
        message=message,
        observed_generation=generation,
        job_name=job_name,
        conditions=conditions,
        start_time=old.start_time or obs.start_time,
        completion_time=obs.completion_time if obs.phase in ("Succeeded", "Failed") else None,
        restarts=obs.restarts if job_name else None,
        progress=progress,
        output=output,
        chosen=_chosen(obs.final_metrics) or old.chosen,
    )


def _chosen(metrics: Mapping[str, float]) -> Chosen | None:
    """The trainer's choices for auto settings, from its termination message's metrics."""
    values: dict[str, Any] = {}
    for name, key in (("epochs", "chosen_epochs"), ("learning_rate", "chosen_learning_rate")):
        if metrics.get(key) is not None:
            values[name] = f"{metrics[key]:g}"
    for name in ("batch_size", "gradient_accumulation"):
        if metrics.get(f"chosen_{name}") is not None:
            values[name] = int(metrics[f"chosen_{name}"])
    return Chosen(**values) if values else None


def _final_progress(progress: Progress | None, metrics: Mapping[str, float]) -> Progress | None:

    update: dict[str, Any] = {"eta": None}
    loss = metrics.get("train_loss", metrics.get("loss"))
    if loss is not None:
        update["loss"] = decimal_string(loss, 4)
    if metrics.get("eval_loss") is not None:
        update["eval_loss"] = decimal_string(metrics["eval_loss"], 4)
    if progress is None:
        return Progress(**update) if len(update) > 1 else None
    if progress.total_steps:
        total = progress.total_steps
        update |= {"step": total, "percent": 100, "summary": f"{total}/{total} (100%)"}
    return progress.model_copy(update=update)


# ---------------------------------------------------------------------------
# Reading pods


def _container_state(pod: Body) -> Mapping[str, Any]:
    for status in _get(pod, "status", "containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return status.get("state") or {}
    return {}


def _exit_code(pod: Body) -> int | None:
    terminated = _container_state(pod).get("terminated")
    return int(terminated["exitCode"]) if terminated and "exitCode" in terminated else None


def _termination(pod: Body | None) -> TerminationMessage | None:
    if pod is None:
        return None
    terminated = _container_state(pod).get("terminated") or {}
    return TerminationMessage.from_json(terminated.get("message"))


def _first_start(pods: Sequence[Body]) -> str | None:
    times = []
    for pod in pods:
        state = _container_state(pod)
        started = (state.get("running") or {}).get("startedAt") or (
            state.get("terminated") or {}
        ).get("startedAt")
        if started:
            times.append(started)
    return min(times) if times else None


def _latest_checkpoint(pods: Sequence[Body]) -> str | None:
    for pod in reversed(pods):
        message = _termination(pod)
        if message and message.checkpoint:
            return message.checkpoint
    return None


def _last(items: Any) -> Any:
    result = None
    for item in items:
        result = item
    return result


def _get(body: Mapping[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(body, Mapping):
            return None
        body = body.get(key)
    return body


def _join(prefix: str, suffix: str) -> str:
    return prefix.rstrip("/") + "/" + suffix


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE else text[: MESSAGE - 1] + "…"
