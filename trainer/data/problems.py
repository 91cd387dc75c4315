"""Problems found in the data, and the policy that decides what they cost.

A record that cannot be used becomes a `RecordProblem` (where, which field, what, what to
do). `ProblemLog` applies `dataset.onInvalid`: with `fail` (the default) the run fails
after reading, listing the first few problems and how many there were in all; with
`skip` the records are dropped and counted by reason in the report. Problems with a
whole file (it cannot be read at all) are not recoverable and raise at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from kubetune.trainer.errors import BadDataError

# How many problems an error message lists before it says "and N more".
SHOWN = 5


@dataclass(frozen=True)
class RecordProblem:
    """One unusable record."""

    where: str  # "data.jsonl:12", "data.parquet row 7", "data.json [3]"
    reason: str  # a short machine-readable kind, the report's key: "invalid-json", "missing-field"
    message: str  # what is wrong and what to do

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ProblemLog:
    """Collects problems; `check()` raises under onInvalid: fail."""

    on_invalid: Literal["fail", "skip"]
    first: list[RecordProblem] = field(default_factory=list)
    by_reason: Counter[str] = field(default_factory=Counter)

    def add(self, problem: RecordProblem) -> None:
        self.by_reason[problem.reason] += 1
        if len(self.first) < SHOWN:
            self.first.append(problem)

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def check(self) -> None:
        """Raise BadDataError if there were problems and the policy is to fail."""
        if self.on_invalid == "fail" and self.count:
            raise BadDataError(
                self.summary()
                + "\nfix these records, or set dataset.onInvalid: skip to drop and count them"
            )

    def summary(self) -> str:
        lines = [
            f"{self.count} unusable record(s) ({', '.join(f'{k}: {v}' for k, v in sorted(self.by_reason.items()))}):"
        ]
        lines += [f"  {p}" for p in self.first]
        if self.count > len(self.first):
            lines.append(f"  ... and {self.count - len(self.first)} more")
        return "\n".join(lines)
