"""Status computation: phase, reason and message from the Job, its pods and the trainer."""

from __future__ import annotations

from kubetune.api.contract import TerminationMessage
from kubetune.api.status import Progress
from kubetune.operator.observe import invalid_spec, next_status, observe
from kubetune.operator.progress import MetricsSample, progress_from
from tests.unit.operator_fixtures import condition, job, pod, running, terminated, tuningjob

NOW = "2026-01-01T01:00:00Z"
LATER = "2026-01-01T02:00:00Z"


def test_pending_shows_the_schedulers_reason() -> None:
    unschedulable = condition(
        "PodScheduled",
        "Unschedulable",
        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available.",
        status="False",
    )
    obs = observe(tuningjob(), job(), [pod(scheduled=unschedulable)])
    assert (obs.phase, obs.reason) == ("Pending", "Unschedulable")
    assert obs.message.startswith("0/3 nodes are available: 3 Insufficient nvidia.com/gpu")


def test_pending_shows_why_the_container_waits() -> None:
    waiting = {
        "waiting": {
            "reason": "CreateContainerConfigError",
            "message": 'secret "s3-credentials" not found',
        }
    }
    obs = observe(
        tuningjob(), job(), [pod(node="gpu-1", scheduled=condition("PodScheduled"), state=waiting)]
    )
    assert (obs.phase, obs.reason) == ("Pending", "CreateContainerConfigError")
    assert 'secret "s3-credentials" not found' in obs.message and "gpu-1" in obs.message


def test_pending_before_the_job_controller_made_a_pod() -> None:
    assert observe(tuningjob(), job(), []).reason == "PodCreating"


def test_running_once_the_trainer_container_runs() -> None:
    obs = observe(
        tuningjob(),
        job(),
        [pod(phase="Running", node="gpu-1", state=running("2026-01-01T00:05:00Z"))],
    )
    assert (obs.phase, obs.reason) == ("Running", "Training")
    assert obs.start_time == "2026-01-01T00:05:00Z" and obs.running_pod is not None


def test_succeeded_takes_the_adapter_from_the_termination_message() -> None:
    message = TerminationMessage(
        reason="Succeeded",
        adapter="s3://adapters/dolly/adapter/",
        metrics={"train_loss": 1.2345, "eval_loss": 1.5},
    )
    done = job(
        conditions=[condition("SuccessCriteriaMet"), condition("Complete")],
        completionTime="2026-01-01T00:30:00Z",
    )
    obs = observe(
        tuningjob(), done, [pod(phase="Succeeded", state=terminated(0, message.to_json()))]
    )
    assert (obs.phase, obs.adapter, obs.completion_time) == (
        "Succeeded",
        "s3://adapters/dolly/adapter/",
        "2026-01-01T00:30:00Z",
    )
    status = next_status(
        None,
        obs,
        generation=1,
        job_name="dolly",
        progress=Progress(step=10, total_steps=20),
        now=NOW,
    )
    assert status.output.adapter == "s3://adapters/dolly/adapter/"
    assert (status.progress.summary, status.progress.loss, status.progress.eval_loss) == (
        "20/20 (100%)",
        "1.2345",
        "1.5",
    )


def test_succeeded_without_a_message_points_at_the_output_layout() -> None:
    obs = observe(tuningjob(), job(conditions=[condition("Complete")]), [])
    assert obs.adapter == "s3://adapters/dolly/adapter/"


def test_permanent_exit_codes_become_their_reasons_with_the_trainers_message() -> None:
    for code, reason in ((65, "BadData"), (77, "StorageAccess"), (78, "InvalidSpec")):
        message = TerminationMessage(
            reason=reason, message=f"what went wrong ({code}) and what to do"
        )
        failed = job(
            conditions=[
                condition("Failed", "PodFailurePolicy", "Container trainer ... exit code 65")
            ],
            failed=1,
        )
        obs = observe(
            tuningjob(), failed, [pod(phase="Failed", state=terminated(code, message.to_json()))]
        )
        assert (obs.phase, obs.reason, obs.message) == (
            "Failed",
            reason,
            f"what went wrong ({code}) and what to do",
        )


def test_backoff_limit_and_deadline_say_so_in_words() -> None:
    crash = pod(
        "dolly-2",
        phase="Failed",
        state=terminated(1, "Traceback...\nRuntimeError: CUDA error: out of memory"),
    )
    tj = tuningjob(runtime={"backoffLimit": 1, "activeDeadlineSeconds": 60})
    obs = observe(
        tj,
        job(conditions=[condition("Failed", "BackoffLimitExceeded")], failed=2),
        [pod("dolly-1", phase="Failed", state=terminated(1)), crash],
    )
    assert obs.reason == "BackoffLimitExceeded" and obs.restarts == 2
    assert (
        "runtime.backoffLimit (1)" in obs.message
        and "RuntimeError: CUDA error: out of memory" in obs.message
    )
    obs = observe(tj, job(conditions=[condition("Failed", "DeadlineExceeded")]), [])
    assert obs.reason == "DeadlineExceeded" and "(60s)" in obs.message


def test_a_preempted_pod_is_a_restart_not_a_failure() -> None:
    message = TerminationMessage(
        reason="Preempted", checkpoint="s3://adapters/dolly/checkpoints/step-000200/"
    )
    preempted = pod("dolly-1", phase="Failed", state=terminated(75, message.to_json()))
    obs = observe(tuningjob(), job(), [preempted])
    assert (obs.phase, obs.reason) == ("Running", "Restarting"), (
        "its trainer ran: not back to Pending"
    )
    assert "exited with code 75 (Preempted)" in obs.message and obs.restarts == 1
    assert obs.checkpoint == "s3://adapters/dolly/checkpoints/step-000200/"
    again = observe(
        tuningjob(),
        job(),
        [
            preempted,
            pod(
                "dolly-2",
                phase="Running",
                created="2026-01-01T00:02:00Z",
                node="n",
                state=running(),
            ),
        ],
    )
    assert again.phase == "Running" and again.restarts == 1


def test_suspended_and_queued() -> None:
    assert observe(tuningjob(suspend=True), job(suspend=True), []).phase == "Suspended"
    queued = observe(tuningjob(scheduling={"queueName": "gpus"}), job(suspend=True), [])
    assert (queued.phase, queued.reason) == (
        "Queued",
        "WaitingForAdmission",
    ) and "'gpus'" in queued.message
    # The user suspends a queued job: it is Suspended, not Queued.
    assert (
        observe(
            tuningjob(suspend=True, scheduling={"queueName": "gpus"}), job(suspend=True), []
        ).phase
        == "Suspended"
    )


def test_conditions_move_only_when_their_status_does() -> None:
    pending = next_status(
        None,
        observe(tuningjob(), job(), []),
        generation=1,
        job_name="dolly",
        progress=None,
        now=NOW,
    )
    assert pending.phase == "Pending" and pending.observed_generation == 1
    assert (
        pending.condition("Running").status == "False"
        and pending.condition("Running").last_transition_time == NOW
    )
    assert pending.condition("Succeeded") is None and pending.condition("Failed") is None
    scheduled = observe(
        tuningjob(),
        job(),
        [
            pod(
                node="n",
                scheduled=condition("PodScheduled"),
                state={"waiting": {"reason": "ContainerCreating"}},
            )
        ],
    )
    still = next_status(
        pending, scheduled, generation=1, job_name="dolly", progress=None, now=LATER
    )
    assert still.condition("Running").reason == "ContainerCreating"
    assert still.condition("Running").last_transition_time == NOW, (
        "same status: the transition time stays"
    )
    run = observe(tuningjob(), job(), [pod(phase="Running", node="n", state=running())])
    started = next_status(still, run, generation=2, job_name="dolly", progress=None, now=LATER)
    assert (
        started.condition("Running").status == "True"
        and started.condition("Running").last_transition_time == LATER
    )
    assert all(c.observed_generation == 2 for c in started.conditions)
    assert started.start_time == "2026-01-01T00:01:00Z"


def test_invalid_spec_is_a_final_failure_without_a_job() -> None:
    status = next_status(
        None,
        invalid_spec("spec.output.destination: use an s3:// URI"),
        generation=4,
        job_name=None,
        progress=None,
        now=NOW,
    )
    assert (status.phase, status.reason, status.job_name, status.restarts) == (
        "Failed",
        "InvalidSpec",
        None,
        None,
    )
    assert status.condition("Failed").message == "spec.output.destination: use an s3:// URI"
    assert status.terminal


def test_progress_is_kept_without_eta_when_the_run_stops() -> None:
    progress = Progress(step=5, total_steps=10, eta="1m0s")
    running_status = next_status(
        None,
        observe(tuningjob(), job(), [pod(phase="Running", node="n", state=running())]),
        generation=1,
        job_name="dolly",
        progress=progress,
        now=NOW,
    )
    suspended = next_status(
        running_status,
        observe(tuningjob(suspend=True), job(suspend=True), []),
        generation=2,
        job_name="dolly",
        progress=None,
        now=LATER,
    )
    assert suspended.progress.step == 5 and suspended.progress.eta is None


# ---------------------------------------------------------------------------
# Between a trainer pod's end and the Job's verdict: never back to Pending


def test_pod_succeeded_before_the_job_is_complete_is_still_running() -> None:
    message = TerminationMessage(reason="Succeeded", adapter="s3://adapters/dolly/adapter/")
    finished = pod(phase="Succeeded", node="n", state=terminated(0, message.to_json()))
    running_status = next_status(
        None,
        observe(tuningjob(), job(), [pod(phase="Running", node="n", state=running())]),
        generation=1,
        job_name="dolly",
        progress=Progress(step=23, total_steps=30, eta="5s"),
        now=NOW,
    )
    obs = observe(
        tuningjob(), job(), [finished]
    )  # the Job controller has not marked it Complete yet
    assert (obs.phase, obs.reason) == ("Running", "Completing")
    status = next_status(
        running_status, obs, generation=1, job_name="dolly", progress=None, now=LATER
    )
    assert status.phase == "Running" and status.progress.step == 23 and status.progress.eta is None
    assert status.condition("Running").last_transition_time == NOW, "still running: no transition"


def test_container_ended_before_the_pod_phase_follows_is_still_running() -> None:
    """A real kubelet writes the container's termination before the pod's phase (kind showed
    Running, then Pending, then Running again without this)."""
    message = TerminationMessage(reason="Succeeded", adapter="s3://adapters/dolly/adapter/")
    ended = pod(phase="Running", node="n", state=terminated(0, message.to_json()))
    obs = observe(tuningjob(), job(), [ended])
    assert (obs.phase, obs.reason) == ("Running", "Completing")
    crashed = pod(phase="Running", node="n", state=terminated(1, "RuntimeError: boom"))
    obs = observe(tuningjob(), job(), [crashed])
    assert (obs.phase, obs.reason) == ("Running", "Restarting")


def test_pod_failed_with_a_retryable_code_while_the_job_is_active_is_still_running() -> None:
    crashed = pod(
        phase="Failed", node="n", state=terminated(1, "Traceback...\nRuntimeError: CUDA error")
    )
    obs = observe(tuningjob(), job(failed=1, active=0), [crashed])
    assert (obs.phase, obs.reason) == ("Running", "Restarting")
    assert (
        "exited with code 1 (TrainerError): RuntimeError: CUDA error" in obs.message
        and obs.restarts == 1
    )


def test_pod_failed_with_a_permanent_code_before_the_job_failed_is_still_running() -> None:
    message = TerminationMessage(
        reason="BadData", message="dataset.source: no records left after filtering"
    )
    bad = pod(phase="Failed", node="n", state=terminated(65, message.to_json()))
    obs = observe(tuningjob(), job(), [bad])  # the Job's Failed condition follows
    assert (obs.phase, obs.reason) == ("Running", "Failing")
    assert "no records left after filtering" in obs.message and "new trainer pod" not in obs.message
    failed = observe(
        tuningjob(), job(conditions=[condition("Failed", "PodFailurePolicy")], failed=1), [bad]
    )
    assert (failed.phase, failed.reason) == ("Failed", "BadData")


def test_after_preemption_a_new_pod_waiting_for_the_scheduler_is_pending() -> None:
    unschedulable = condition(
        "PodScheduled",
        "Unschedulable",
        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        status="False",
    )
    waiting = pod("dolly-2", created="2026-01-01T00:30:00Z", scheduled=unschedulable)
    # The preempted pod is gone (deleted by the scheduler, removed by the kubelet) ...
    obs = observe(tuningjob(), job(), [waiting])
    assert (obs.phase, obs.reason) == ("Pending", "Unschedulable") and obs.message.startswith(
        "0/3 nodes are available"
    )
    # ... or still there, failed, while the Job's tracking finalizer holds it.
    preempted = pod("dolly-1", phase="Failed", node="n", state=terminated(75), deleting=True)
    obs = observe(tuningjob(), job(), [preempted, waiting])
    assert (obs.phase, obs.reason) == ("Pending", "Unschedulable")
    # While it stops, before the new pod exists, the run has not gone back to waiting.
    stopping = pod("dolly-1", phase="Running", node="n", state=terminated(75), deleting=True)
    assert observe(tuningjob(), job(), [stopping]).phase == "Running"


def test_a_pod_that_never_ran_is_followed_by_pending() -> None:
    evicted = pod(phase="Failed", node="n", state={"waiting": {"reason": "ContainerCreating"}})
    evicted["status"]["reason"] = "Evicted"
    obs = observe(tuningjob(), job(), [evicted])
    assert (obs.phase, obs.reason) == ("Pending", "Restarting") and "(Evicted)" in obs.message
    never_started = pod(node="n", scheduled=condition("PodScheduled"), deleting=True)
    assert observe(tuningjob(), job(), [never_started]).phase == "Pending"


def test_the_phase_of_a_whole_run_never_goes_back() -> None:
    """Each state the Job and its pod pass through on the way to Succeeded, in order."""
    order = ["Pending", "Running", "Succeeded"]
    message = TerminationMessage(
        reason="Succeeded", adapter="s3://adapters/dolly/adapter/"
    ).to_json()
    states = [
        (job(), []),
        (job(), [pod()]),
        (
            job(),
            [
                pod(
                    node="n",
                    scheduled=condition("PodScheduled"),
                    state={"waiting": {"reason": "ContainerCreating"}},
                )
            ],
        ),
        (job(), [pod(phase="Running", node="n", state=running())]),
        (job(), [pod(phase="Succeeded", node="n", state=terminated(0, message))]),
        (
            job(conditions=[condition("SuccessCriteriaMet")]),
            [pod(phase="Succeeded", node="n", state=terminated(0, message))],
        ),
        (
            job(conditions=[condition("Complete")]),
            [pod(phase="Succeeded", node="n", state=terminated(0, message))],
        ),
    ]
    phases = [observe(tuningjob(), j, pods).phase for j, pods in states]
    assert [order.index(p) for p in phases] == sorted(order.index(p) for p in phases), phases


def test_a_loading_trainer_shows_no_progress_columns() -> None:
    run = observe(tuningjob(), job(), [pod(phase="Running", node="n", state=running())])
    loading = progress_from(
        MetricsSample(at=1.0, step=0, epoch=0.0, loss=0.0, eval_loss=0.0, tokens_per_second=0.0),
        None,
        NOW,
    )
    shown = next_status(
        None, run, generation=1, job_name="dolly", progress=loading, now=NOW
    ).to_dict()["progress"]
    assert shown == {"updateTime": NOW}, "PROGRESS and LOSS stay blank, not 0"
    planned = progress_from(MetricsSample(at=2.0, step=0, total_steps=30, loss=0.0), None, LATER)
    shown = next_status(
        None, run, generation=1, job_name="dolly", progress=planned, now=LATER
    ).to_dict()["progress"]
    assert (shown["summary"], "loss" in shown) == ("0/30 (0%)", False)


def test_the_values_chosen_for_auto_settings_reach_the_status() -> None:
    message = TerminationMessage(
        reason="Succeeded",
        adapter="s3://adapters/emails/adapter/",
        metrics={
            "train_loss": 1.0,
            "chosen_epochs": 6.0,
            "chosen_learning_rate": 2e-4,
            "chosen_batch_size": 1.0,
            "chosen_gradient_accumulation": 1.0,
        },
    )
    done = job(conditions=[condition("Complete")])
    obs = observe(
        tuningjob(), done, [pod(phase="Succeeded", state=terminated(0, message.to_json()))]
    )
    status = next_status(None, obs, generation=1, job_name="emails", progress=None, now=NOW)
    assert status.to_dict()["chosen"] == {
        "epochs": "6",
        "learningRate": "0.0002",
        "batchSize": 1,
        "gradientAccumulation": 1,
    }
    # A run whose settings were all explicit reports no choices.
    plain = TerminationMessage(reason="Succeeded", metrics={"train_loss": 1.0})
    obs = observe(tuningjob(), done, [pod(phase="Succeeded", state=terminated(0, plain.to_json()))])
    assert next_status(None, obs, generation=1, job_name="x", progress=None, now=NOW).chosen is None


def test_a_full_fine_tune_says_where_the_model_is() -> None:
    message = TerminationMessage(reason="Succeeded", adapter="s3://models-tuned/qwen/model/")
    done = job(conditions=[condition("Complete")])
    obs = observe(
        tuningjob(), done, [pod(phase="Succeeded", state=terminated(0, message.to_json()))]
    )
    assert obs.message == "the model is at s3://models-tuned/qwen/model/"
    assert obs.adapter == "s3://models-tuned/qwen/model/"
