"""Loss and learning-rate curves from metrics.jsonl: series, a text sparkline, a PNG.

metrics.jsonl (spec.output.destination, kubetune/api/contract.OutputLayout.METRICS) has
one JSON object per line: `kind: train` rows with step, loss and learning_rate every
training.logEvery steps, `kind: eval` rows with step and eval_loss.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Point = tuple[int, float]
SPARKS = "▁▂▃▄▅▆▇█"


class CurveError(ValueError):
    """metrics.jsonl that cannot be read; the message says where."""


@dataclass
class Curves:
    train_loss: list[Point] = field(default_factory=list)
    eval_loss: list[Point] = field(default_factory=list)
    learning_rate: list[Point] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.train_loss or self.eval_loss)


def parse_metrics(lines: Iterable[str], source: str) -> Curves:
    curves = Curves()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise CurveError(f"{source}:{number}: not JSON ({e})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise CurveError(f"{source}:{number}: a metrics record needs a step")
        step = int(record["step"])
        if record.get("kind") == "train":
            if _finite(record.get("loss")):
                curves.train_loss.append((step, float(record["loss"])))
            if _finite(record.get("learning_rate")):
                curves.learning_rate.append((step, float(record["learning_rate"])))
        elif record.get("kind") == "eval" and _finite(record.get("eval_loss")):
            curves.eval_loss.append((step, float(record["eval_loss"])))
    return curves


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """One line of block characters; longer series are averaged into `width` buckets."""
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [
            sum(chunk) / len(chunk)
            for i in range(width)
            if (chunk := values[int(i * size) : max(int((i + 1) * size), int(i * size) + 1)])
        ]
    low, high = min(values), max(values)
    span = high - low
    top = len(SPARKS) - 1
    return "".join(SPARKS[round((v - low) / span * top) if span else 0] for v in values)


def summary(curves: Curves, width: int = 60) -> str:
    """Sparklines with first → last values, for a terminal."""
    lines = []
    for label, points in (
        ("train loss", curves.train_loss),
        ("eval loss", curves.eval_loss),
        ("learning rate", curves.learning_rate),
    ):
        if not points:
            continue
        values = [v for _, v in points]
        lines.append(
            f"{label:<14} {sparkline(values, width)}  {values[0]:.4g} → {values[-1]:.4g} "
            f"(steps {points[0][0]} to {points[-1][0]})"
        )
    return "\n".join(lines)


def save_png(curves: Curves, path: Path, title: str) -> None:
    """Loss (train and eval) above, learning rate below. Needs matplotlib (the plot extra)."""
    try:
        import matplotlib
    except ImportError:
        raise CurveError(
            "writing a PNG needs matplotlib: pip install 'kubetune[plot]' (or use --no-png "
            "for the text sparkline only)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, lr_axes) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    if curves.train_loss:
        loss_axes.plot(*zip(*curves.train_loss, strict=True), label="training loss")
    if curves.eval_loss:
        loss_axes.plot(*zip(*curves.eval_loss, strict=True), "o-", label="validation loss")
    loss_axes.set_ylabel("loss per trained token")
    loss_axes.set_title(title)
    loss_axes.grid(alpha=0.3)
    loss_axes.legend()
    if curves.learning_rate:
        lr_axes.plot(*zip(*curves.learning_rate, strict=True), color="tab:green")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("optimizer step")
    lr_axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def read_metrics(
    location: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    addressing_style: str = "auto",
) -> Curves:
    """metrics.jsonl from a local path or s3://BUCKET/KEY (credentials from the environment,
    as for the AWS CLI; AWS_CA_BUNDLE for a private CA)."""
    if not location.startswith("s3://"):
        path = Path(location.removeprefix("file://")).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise CurveError(f"{path}: {e.strerror or e}") from None
        return parse_metrics(text.splitlines(), str(path))
    bucket, _, key = location[len("s3://") :].partition("/")
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise CurveError("reading s3:// needs boto3: pip install 'kubetune[client]'") from None
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        config=Config(region_name=region, s3={"addressing_style": addressing_style}),
    )
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404"):
            raise CurveError(
                f"{location}: no such object; the trainer writes it after its first logged step"
            ) from None
        raise CurveError(f"{location}: {code or e}") from None
    except BotoCoreError as e:
        raise CurveError(f"{location}: {e}") from None
    return parse_metrics(body.decode("utf-8").splitlines(), location)
