"""Reading the trainer's Prometheus metrics into status.progress."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from kubetune.operator.progress import MetricsSample, format_duration, parse_metrics, progress_from


def _exposition(step: float, total: float, loss: float, phase: str = "train") -> str:
    """Real exposition text, as prometheus_client writes it in the trainer."""
    registry = CollectorRegistry()
    Gauge("kubetune_trainer_step", "steps", registry=registry).set(step)
    Gauge("kubetune_trainer_total_steps", "total", registry=registry).set(total)
    Gauge("kubetune_trainer_epoch", "epoch", registry=registry).set(1.25)
    Gauge("kubetune_trainer_loss", "loss", registry=registry).set(loss)
    Gauge("kubetune_trainer_eval_loss", "eval", registry=registry).set(float("nan"))
    Gauge("kubetune_trainer_tokens_per_second", "tps", registry=registry).set(1234.5)
    phases = Gauge("kubetune_trainer_phase", "phase", ["phase"], registry=registry)
    for name in ("prepare", "train", "export"):
        phases.labels(name).set(1 if name == phase else 0)
    return generate_latest(registry).decode()


def test_parse_real_exposition_text() -> None:
    sample = parse_metrics(_exposition(120, 600, 1.87341), at=100.0)
    assert (sample.step, sample.total_steps, sample.epoch, sample.loss) == (120, 600, 1.25, 1.87341)
    assert sample.eval_loss is None, "NaN (not evaluated yet) is not a loss"
    assert (sample.tokens_per_second, sample.phase) == (1234.5, "train")


def test_progress_summary_and_eta_from_the_pace_since_the_first_sample() -> None:
    first = MetricsSample(at=100.0, step=100, total_steps=600)
    latest = parse_metrics(_exposition(150, 600, 1.87341), at=160.0)
    progress = progress_from(latest, first, "2026-01-01T00:00:00Z")
    assert (progress.summary, progress.percent, progress.loss, progress.epoch) == (
        "150/600 (25%)",
        25,
        "1.8734",
        "1.25",
    )
    assert progress.eta == "9m0s"  # 450 steps at 50 steps/minute
    assert progress.tokens_per_second == 1234
    assert progress_from(latest, None, "t").eta is None


def test_garbage_and_missing_metrics() -> None:
    assert parse_metrics("", at=0).step is None
    assert progress_from(MetricsSample(at=0), None, "t").summary is None


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 12.4, 240, 3723)] == ["0s", "12s", "4m0s", "1h2m3s"]


def _loading_exposition(**values: float) -> str:
    """What the trainer serves while it loads: every gauge at 0 until first set."""
    registry = CollectorRegistry()
    for name in ("step", "total_steps", "epoch", "loss", "eval_loss", "tokens_per_second"):
        Gauge(f"kubetune_trainer_{name}", name, registry=registry).set(values.get(name, 0))
    return generate_latest(registry).decode()


def test_nothing_to_show_while_the_trainer_loads() -> None:
    progress = progress_from(parse_metrics(_loading_exposition(), at=1.0), None, "t")
    assert progress.model_dump(exclude_none=True) == {"update_time": "t"}, (
        "no '0' progress, no loss of 0"
    )


def test_before_the_first_step_progress_reads_zero_of_total_without_loss() -> None:
    # totalSteps known, no optimizer step yet; the baseline evaluation may have run.
    sample = parse_metrics(_loading_exposition(total_steps=30, eval_loss=2.5), at=1.0)
    progress = progress_from(sample, None, "t")
    assert (progress.summary, progress.step, progress.total_steps, progress.percent) == (
        "0/30 (0%)",
        0,
        30,
        0,
    )
    assert (progress.loss, progress.eval_loss, progress.tokens_per_second) == (None, None, None)


def test_after_the_first_step_loss_and_throughput_appear() -> None:
    sample = parse_metrics(
        _loading_exposition(step=1, total_steps=30, loss=2.25, tokens_per_second=812.4), at=1.0
    )
    progress = progress_from(sample, None, "t")
    assert (progress.summary, progress.loss, progress.tokens_per_second) == (
        "1/30 (3%)",
        "2.25",
        812,
    )
    assert progress.eval_loss is None, "0 is the gauge before its first evaluation, not a loss"


def test_a_resumed_trainer_shows_its_step_before_its_first_new_step() -> None:
    # A pod resuming from step 200: its gauges restart at 0, the step is the checkpoint's.
    progress = progress_from(
        parse_metrics(_loading_exposition(step=200, total_steps=300), at=1.0), None, "t"
    )
    assert (progress.summary, progress.loss, progress.tokens_per_second) == (
        "200/300 (66%)",
        None,
        None,
    )
