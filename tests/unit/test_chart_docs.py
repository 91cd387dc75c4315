"""The chart's README is generated from values.yaml: it must be current and complete."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.unit.chart_support import CHART, go_tool


def generated_readme() -> str:
    result = subprocess.run(
        [go_tool("helm-docs"), "--chart-search-root", ".", "--template-files", "README.md.gotmpl",
         "--dry-run", "--log-level", "warning"],
        cwd=CHART, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return result.stdout


def leaves(values: object, prefix: str = "") -> set[str]:
    """Dotted paths of the values helm-docs lists: maps are walked unless empty, lists are leaves."""
    if isinstance(values, dict) and values:
        return {p for k, v in values.items() for p in leaves(v, f"{prefix}{k}.")}
    return {prefix.rstrip(".")}


def test_readme_is_generated_from_the_current_values() -> None:
    assert (CHART / "README.md").read_text() == generated_readme(), (
        "stale chart README: run `make chart-docs`"
    )


def test_every_value_is_documented() -> None:
    rows = {}
    for line in (CHART / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[A-Za-z][\w.]*", cells[0]):
            rows[cells[0]] = cells[3]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = {k for k, description in rows.items() if description}
    # A map documented as a whole (its `# --` comment on the map) covers its keys.
    missing = {
        leaf
        for leaf in leaves(values)
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    }
    assert missing == set(), "values without a `# --` comment in values.yaml"
