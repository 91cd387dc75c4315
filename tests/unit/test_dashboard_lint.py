"""Grafana's dashboard-linter (v0.1.1, hack/tools/dashboard-linter) on the chart's dashboard.

`--strict` fails on warnings too. The linter reads `.lint` next to the dashboard, as it
does for anyone who runs it on that file: the rules excluded there say why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.unit.chart_support import CHART, go_tool

DASHBOARD = CHART / "files" / "dashboards" / "kubetune.json"


def lint(dashboard: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [go_tool("dashboard-linter"), "lint", "--strict", "--verbose", str(dashboard)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_dashboard_passes_grafanas_linter() -> None:
    result = lint(DASHBOARD)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linter_fails_a_fixed_range_and_a_panel_without_description(tmp_path: Path) -> None:
    """The check above is not vacuous: the faults of issue 16 fail it, under the same .lint."""
    shutil.copy(DASHBOARD.parent / ".lint", tmp_path / ".lint")
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "S3 throughput"]
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace("$__rate_interval", "1m")
    del panel["description"]
    broken = tmp_path / "kubetune.json"
    broken.write_text(json.dumps(dashboard))
    result = lint(broken)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    failed = [line for line in output.splitlines() if "❌" in line]
    assert len(failed) == 2, output
    assert "panel 'S3 throughput' has missing title or description" in failed[0]
    assert "[1m]))': should use $__rate_interval" in failed[1]
