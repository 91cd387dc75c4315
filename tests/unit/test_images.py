"""Dockerfile.trainer and Dockerfile.operator, checked without a Docker engine.

The built images are run by tests/kind/test_*_image.py; this tests what can be tested
from the files: hadolint finds nothing; no `# syntax=` line (BuildKit would fetch a
frontend image from a registry); the images install from uv.lock with --frozen (the
dependency set CI tests) and the right extra only; that set holds what the code imports
(and no torch in the operator); the trainer needs no CUDA base image because the locked
torch brings the CUDA runtime as wheels; both images share one Python base, CI's Python;
the local base images' script agrees with the Dockerfiles' build arguments; the user,
entry point and ports are what the operator's Job builder and the Helm chart put in the
pods.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
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

    def lineage(self, stage: Stage) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first: the image's layers."""
        chain = [stage]
        names = {s.name for s in self.stages if s.name}
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def base_image(self, stage: Stage) -> str:
        """The image a stage is built on at the bottom of its lineage, ARGs expanded."""
        return self.expand(self.lineage(stage)[-1].base)

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


def uv_commands(stage: Stage, *verb: str) -> list[list[str]]:
    """The `uv <verb...>` commands the stage's RUN instructions run, as word lists."""
    commands = []
    for run in stage.all("RUN"):
        for part in re.split(r"&&|;", run):
            words = shlex.split(part)
            if "uv" in words:
                command = words[words.index("uv") :]
                if tuple(command[1 : 1 + len(verb)]) == verb:
                    commands.append(command)
    return commands


def uv_syncs(stage: Stage) -> list[list[str]]:
    return uv_commands(stage, "sync")


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
        for dependency in package.get("dependencies", []):
            todo.append(dependency["name"])
            # `cuda-toolkit[cudart]`: the extras name the dependency's optional dependencies.
            optional = PACKAGES[dependency["name"]].get("optional-dependencies", {})
            for wanted in dependency.get("extra", []):
                todo += [d["name"] for d in optional.get(wanted, [])]
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


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=lambda p: p.name)
def test_no_syntax_line_that_would_fetch_a_frontend(dockerfile: Path) -> None:
    # `# syntax=docker/dockerfile:1` makes BuildKit pull a frontend image from Docker Hub,
    # which fails without a registry; the built-in frontend has RUN --mount=type=cache.
    assert not re.search(r"^#\s*syntax\s*=", dockerfile.read_text(), re.M | re.I)


@pytest.mark.parametrize(
    ("dockerfile", "extra"),
    [(TRAINER, "trainer"), (OPERATOR, "operator")],
    ids=["trainer", "operator"],
)
def test_image_installs_the_locked_set_and_one_extra(dockerfile: Path, extra: str) -> None:
    parsed = parse_dockerfile(dockerfile)

    def only_the_lock_and_one_extra(command: list[str]) -> None:
        assert "--frozen" in command, command  # the lock as CI tested it, never re-resolved
        assert "--no-dev" in command, command
        assert command[command.index("--extra") + 1] == extra, command
        assert command.count("--extra") == 1 and "--all-extras" not in command, command

    # The dependency set, exported from the lock alone...
    requirements = parsed.stage("requirements")
    assert "pyproject.toml uv.lock ./" in requirements.all("COPY")
    (export,) = uv_commands(requirements, "export")
    only_the_lock_and_one_extra(export)
    assert "--no-emit-project" in export
    exported = export[export.index("--output-file") + 1]
    # ...is what the environment gets, file by file checked against the lock's hashes...
    runtime = parsed.stage("runtime")
    (install,) = [r for r in runtime.all("RUN") if "pip sync" in r]
    mounted = re.search(r"--mount=type=bind,from=requirements,source=(\S+),target=(\S+)", install)
    assert mounted and mounted.group(1) == exported, install
    (pip_sync,) = uv_commands(runtime, "pip", "sync")
    assert "--require-hashes" in pip_sync and pip_sync[-1] == mounted.group(2), pip_sync
    # ...and kubetune goes in with uv sync, which checks the environment against the lock.
    builder = parsed.stage("builder")
    assert builder.base == "runtime"
    (sync,) = uv_syncs(builder)
    only_the_lock_and_one_extra(sync)
    assert "--no-editable" in sync
    text = dockerfile.read_text()
    assert "pip install" not in text and "--upgrade" not in text
    # The image is the runtime stage plus kubetune's files: it carries the environment,
    # not the tools that made it (uv is mounted for the install, never copied in).
    layers = parsed.lineage(parsed.final)
    assert [s.name for s in layers] == [None, "runtime"]
    assert parsed.final.all("COPY") == ["--from=builder /project/ /"]
    assert not any("--from=uv" in c for stage in layers for c in stage.all("COPY"))
    assert not re.search(
        r"\b(gcc|g\+\+|build-essential|clang|cuda-nvcc|make)\b",
        " ".join(r for stage in layers for r in stage.all("RUN")),
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


def test_trainer_needs_no_cuda_base_because_torch_brings_the_cuda_runtime() -> None:
    # The locked torch depends on the CUDA runtime, cuBLAS, cuDNN and NCCL as wheels...
    torch = {d["name"] for d in PACKAGES["torch"]["dependencies"]}
    assert {"cuda-toolkit", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= torch, torch
    cudart = closure("trainer")
    assert {"nvidia-cuda-runtime", "nvidia-cublas"} <= set(cudart)
    # ...which install the libraries next to torch, where libtorch_cuda's RPATH
    # ($ORIGIN/../../nvidia/...) finds them (tests/kind/test_trainer_image.py loads them).
    spec = importlib.util.find_spec("torch")
    assert spec and spec.origin
    site = Path(spec.origin).parents[1]
    major = locked_torch_cuda().split(".")[0]
    for library in (f"cu{major}/lib/libcudart.so.{major}", f"cu{major}/lib/libcublas.so.{major}"):
        assert (site / "nvidia" / library).is_file(), library
    # So the trainer builds on the same plain Python base as the operator, no nvidia/cuda.
    trainer, operator = parse_dockerfile(TRAINER), parse_dockerfile(OPERATOR)
    base = trainer.base_image(trainer.final)
    assert "cuda" not in base and base == operator.base_image(operator.final)
    # Every stage that runs Python is built on that same base.
    for stage in trainer.stages:
        if stage.name != "uv":
            assert trainer.base_image(stage) == base, stage
    # The container toolkit mounts the driver's libcuda only where `compute` is asked for.
    env = " ".join(trainer.final.all("ENV"))
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*compute", env), env
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # the device plugin sets it per pod


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


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=lambda p: p.name)
def test_images_use_cis_python(dockerfile: Path) -> None:
    ci_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    parsed = parse_dockerfile(dockerfile)
    assert parsed.args["PYTHON_VERSION"] == ci_python
    assert re.fullmatch(rf"python:{re.escape(ci_python)}-slim-\w+", parsed.args["PYTHON_IMAGE"])
    assert parsed.base_image(parsed.final) == parsed.args["PYTHON_IMAGE"]


# --- The local bases (hack/images/build-bases.sh) -----------------------------------------

BASES = ROOT / "hack/images/build-bases.sh"


def test_the_images_share_their_base_arguments() -> None:
    trainer, operator = parse_dockerfile(TRAINER), parse_dockerfile(OPERATOR)
    for name in ("PYTHON_VERSION", "PYTHON_IMAGE", "UV_IMAGE"):
        assert trainer.args[name] == operator.args[name], name


def test_local_bases_are_named_after_the_dockerfiles_pins() -> None:
    result = subprocess.run(
        [str(BASES), "--build-args"], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    args = dict(w.split("=", 1) for w in words if w != "--build-arg")
    parsed = parse_dockerfile(OPERATOR)
    version = parsed.args["UV_IMAGE"].rpartition(":")[2]
    suite = parsed.args["PYTHON_IMAGE"].rpartition("-")[2]
    assert args == {
        "PYTHON_IMAGE": f"kubetune-python:{parsed.args['PYTHON_VERSION']}-{suite}",
        "UV_IMAGE": f"kubetune-uv:{version}",
    }
    # Every argument it passes is one both Dockerfiles take.
    for dockerfile in (TRAINER, OPERATOR):
        assert set(args) <= set(parse_dockerfile(dockerfile).args), dockerfile


def test_image_scripts_pass_shellcheck() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    scripts = sorted((ROOT / "hack/images").glob("*.sh"))
    assert len(scripts) >= 2
    result = subprocess.run(
        [str(shellcheck), *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


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


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["nonsense"], {}, "unknown image 'nonsense': operator or trainer"),
        ([], {"IMAGE_BASES": "bogus"}, "IMAGE_BASES=bogus: local or registry"),
    ],
)
def test_image_build_refuses_bad_input_before_touching_docker(
    args: list[str], env: dict[str, str], said: str
) -> None:
    result = subprocess.run(
        [str(ROOT / "hack/images/build.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, **env},
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"images: {said}"
