"""Dockerfile.trainer and Dockerfile.operator, checked without a Docker engine.

No image is built here (there is no Docker engine on these machines), so this tests
what can be tested from the files: hadolint finds nothing; the images install from
uv.lock with --frozen (the dependency set CI tests) and the right extra only; that
set holds what the code imports (and no torch in the operator); the trainer's CUDA
base matches the locked torch build and bitsandbytes carries kernels for it; the
Python is CI's; the user, entry point and ports are what the operator's Job builder
and the Helm chart put in the pods.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from kubetune.api.contract import METRICS_PORT
from kubetune.operator import builders
from kubetune.operator.settings import Settings
from tests.unit.chart_support import CHART, render

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "Dockerfile.trainer"
OPERATOR = ROOT / "Dockerfile.operator"
HADOLINT = Path(sys.executable).parent / "hadolint"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        (stage,) = [s for s in self.stages if s.name == name]
        return stage

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args.get(m.group(1), m.group(0)), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions by stage; continuation lines joined, comments dropped, ARG defaults kept."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            stages.append(
                Stage(
                    base=parts[0],
                    name=parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None,
                )
            )
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args.setdefault(name.strip(), default.strip().strip('"'))
    return Dockerfile(args, stages)


def uv_syncs(stage: Stage) -> list[list[str]]:
    commands = []
    for run in stage.all("RUN"):
        for part in re.split(r"&&|;", run):
            words = shlex.split(part)
            if "uv" in words and "sync" in words:
                commands.append(words[words.index("uv") :])
    return commands


# --- Lint ---------------------------------------------------------------------------------


def hadolint(*args: str, text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), *args],
        input=text, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = hadolint(str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile() -> None:
    result = hadolint("-", text="FROM ubuntu\nRUN apt-get install gcc\nRUN cd /src && make\n")
    assert result.returncode != 0
    assert {"DL3006", "DL3014", "DL3015", "DL3003"} <= set(re.findall(r"DL\d{4}", result.stdout)), (
        result.stdout
    )


# --- The dependency set: uv.lock, frozen, one extra ------------------------------------------

LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PACKAGES = {p["name"]: p for p in LOCK["package"]}


def closure(extra: str) -> dict[str, str]:
    """Every locked distribution (name → version) the project installs with `extra`.

    Markers are ignored, so this is the largest set any platform could get: what is
    not in it is installed nowhere.
    """
    project = PACKAGES["kubetune"]
    todo = [d["name"] for d in project["dependencies"] + project["optional-dependencies"][extra]]
    seen: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        package = PACKAGES[name]
        seen[name] = package["version"]
        todo += [d["name"] for d in package.get("dependencies", [])]
        for wanted in {e for d in package.get("dependencies", []) for e in d.get("extra", [])}:
            todo += [d["name"] for d in package.get("optional-dependencies", {}).get(wanted, [])]
    return seen


# kubetune/client is the people's client (`kubetune status/logs/wait/plot`): neither
# image runs it; it has extras of its own (client, plot), checked below.
CLIENT = "kubetune/client"


def imported_distributions(*folders: str, exclude: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions that the code in `folders` imports at top level."""
    modules: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            if any(path.is_relative_to(ROOT / skipped) for skipped in exclude):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules.add(node.module.split(".")[0])
    mapping = importlib.metadata.packages_distributions()
    distributions = {
        d for m in modules - set(sys.stdlib_module_names) - {"kubetune"} for d in mapping.get(m, [])
    }
    return {re.sub(r"[-_.]+", "-", d).lower() for d in distributions}


@pytest.mark.parametrize(
    ("dockerfile", "extra"),
    [(TRAINER, "trainer"), (OPERATOR, "operator")],
    ids=["trainer", "operator"],
)
def test_image_installs_the_locked_set_and_one_extra(dockerfile: Path, extra: str) -> None:
    parsed = parse_dockerfile(dockerfile)
    builder = parsed.stage("builder")
    assert "pyproject.toml uv.lock ./" in builder.all("COPY")
    syncs = uv_syncs(builder)
    assert syncs, "the builder installs with uv sync"
    for command in syncs:
        assert "--frozen" in command, command  # the lock as CI tested it, never re-resolved
        assert "--no-dev" in command, command
        assert command[command.index("--extra") + 1] == extra, command
        assert command.count("--extra") == 1 and "--all-extras" not in command, command
    text = dockerfile.read_text()
    assert "pip install" not in text and "--upgrade" not in text
    # The final stage carries the environment, not the tools that made it.
    final = parsed.final
    assert not uv_syncs(final)
    assert not any("/uv" in c and "--from=uv" in c for c in final.all("COPY"))
    assert not re.search(
        r"\b(gcc|g\+\+|build-essential|clang|cuda-nvcc|make)\b", " ".join(final.all("RUN"))
    )


@pytest.mark.parametrize(
    ("extras", "folders", "exclude"),
    [
        (["operator"], ["operator", "kubetune"], (CLIENT,)),
        (["trainer"], ["trainer", "kubetune/api"], ()),
        (["client", "plot"], [CLIENT], ()),
    ],
    ids=["operator", "trainer", "client"],
)
def test_the_locked_extra_holds_what_the_code_imports(
    extras: list[str], folders: list[str], exclude: tuple[str, ...]
) -> None:
    installed = {name for extra in extras for name in closure(extra)}
    missing = imported_distributions(*folders, exclude=exclude) - installed
    assert missing == set(), f"imported by {folders} but not installed with the {extras} extras"


def test_operator_image_has_no_torch_and_trainer_image_has_the_training_stack() -> None:
    operator = closure("operator")
    assert not {"torch", "transformers", "bitsandbytes", "peft"} & set(operator)
    assert {"kopf", "kubernetes", "aiohttp", "prometheus-client"} <= set(operator)
    trainer = closure("trainer")
    assert {"torch", "transformers", "peft", "bitsandbytes", "accelerate"} <= set(trainer)
    # The versions the images get are the versions this test run uses.
    for name in ("torch", "transformers", "peft", "bitsandbytes"):
        assert importlib.metadata.version(name).split("+")[0] == trainer[name], name


def locked_torch_cuda() -> str:
    """The CUDA version the locked torch wheel was built for (torch/version.py, no import)."""
    spec = importlib.util.find_spec("torch")
    assert spec and spec.origin
    text = (Path(spec.origin).parent / "version.py").read_text()
    match = re.search(r"^cuda: .*= '([\d.]+)'", text, re.M)
    assert match, "the installed torch is not a CUDA build"
    return match.group(1)


def test_trainer_base_is_a_cuda_runtime_matching_torch() -> None:
    parsed = parse_dockerfile(TRAINER)
    base = parsed.expand(parsed.final.base)
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-runtime-ubuntu[\d.]+", base)
    assert match, f"{base}: not a pinned nvidia/cuda runtime tag"
    assert f"{match.group(1)}.{match.group(2)}" == locked_torch_cuda()
    assert parsed.expand(parsed.stage("builder").base) == base  # the venv is built where it runs


def test_bitsandbytes_carries_kernels_for_torchs_cuda() -> None:
    spec = importlib.util.find_spec("bitsandbytes")
    assert spec and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations)))
    cuda = locked_torch_cuda().replace(".", "")
    assert (folder / f"libbitsandbytes_cuda{cuda}.so").is_file()
    # It is the manylinux wheel from the lock (the one with kernels), not a source build.
    wheels = [w["url"] for w in PACKAGES["bitsandbytes"]["wheels"]]
    assert any(w.endswith("manylinux_2_24_x86_64.whl") for w in wheels)
    assert "sdist" not in PACKAGES["bitsandbytes"]


def test_images_use_cis_python() -> None:
    ci_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    trainer = parse_dockerfile(TRAINER)
    assert trainer.args["PYTHON_VERSION"] == ci_python
    operator = parse_dockerfile(OPERATOR)
    assert re.fullmatch(
        rf"python:{re.escape(ci_python)}-slim-\w+", operator.expand(operator.final.base)
    )


# --- What runs: user, entry point, ports -------------------------------------------------


def user_of(stage: Stage) -> tuple[int, int]:
    uid, _, gid = stage.last("USER").partition(":")
    return int(uid), int(gid)


def test_trainer_image_runs_as_the_operator_runs_the_trainer() -> None:
    final = parse_dockerfile(TRAINER).final
    settings = Settings()
    assert user_of(final) == (settings.run_as_user, settings.run_as_group)
    chart = yaml.safe_load((CHART / "values.yaml").read_text())["operator"]["trainer"]
    assert (chart["runAsUser"], chart["runAsGroup"]) == user_of(final)
    # The Job sets the command; the image's own entry point is the same program.
    entrypoint, cmd = json.loads(final.last("ENTRYPOINT")), json.loads(final.last("CMD"))
    assert entrypoint + cmd == builders.COMMAND
    assert final.last("EXPOSE") == str(METRICS_PORT)
    assert "kubetune" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_operator_image_runs_as_the_chart_runs_it() -> None:
    final = parse_dockerfile(OPERATOR).final
    rendered = render()
    pod = rendered.deployment["spec"]["template"]["spec"]
    assert user_of(final) == (
        pod["securityContext"]["runAsUser"],
        pod["securityContext"]["runAsGroup"],
    )
    container = rendered.operator_container
    # The chart gives arguments only: the image's entry point is the program.
    assert "command" not in container
    assert json.loads(final.last("ENTRYPOINT")) + container["args"] == ["kubetune", "operator"]
    assert json.loads(final.last("CMD")) == container["args"]
    assert {int(p) for p in final.last("EXPOSE").split()} == {
        p["containerPort"] for p in container["ports"]
    }
