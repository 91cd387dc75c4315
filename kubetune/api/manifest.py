"""Reading TuningJob manifests, with errors that point at the file, line and field.

`kubetune prepare/train/render -f FILE` read the very manifest a user applies to a
cluster. A FILE may hold several YAML documents (an example usually carries its
Secret too); the TuningJob among them is used. Errors name the place and the field in
the manifest's own camelCase, and what to do, for example:

    examples/dolly.yaml:14: spec.training.learningRate: must be greater than 0 (got -1)
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetune.api.v1alpha1 import API_VERSION, KIND, TuningJob


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest."""

    field: str  # dotted path in the manifest, e.g. spec.training.learningRate
    message: str
    line: int | None = None  # 1-based, when the manifest came from a file

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class SpecError(ValueError):
    """A manifest that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.render(self.source) for p in self.problems)


def load_tuningjob(path: str | Path) -> TuningJob:
    """Read the TuningJob in a YAML or JSON file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            source, [Problem("", "no such file; pass the path of a TuningJob manifest")]
        ) from None
    except UnicodeDecodeError as e:
        raise SpecError(
            source, [Problem("", f"not UTF-8 text ({e.reason} at byte {e.start})")]
        ) from None
    return parse_tuningjob_text(text, source)


class _NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader that refuses YAML aliases (`*name`).

    An alias repeats the node it names, so nested aliases grow a small file
    exponentially when expanded (a 477-byte manifest became 683 KB, x9 per level):
    the "billion laughs". No manifest needs them; the API server's JSON has none.
    """

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML aliases are not accepted (*{event.anchor}); write the value out in full",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def parse_tuningjob_text(text: str, source: str) -> TuningJob:
    try:
        nodes = [n for n in yaml.compose_all(text, Loader=_NoAliasLoader) if n is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError(
            source, [Problem("", f"not valid YAML: {getattr(e, 'problem', e)}", line)]
        ) from None
    documents = [(node, yaml.safe_load(yaml.serialize(node))) for node in nodes]
    jobs = [(n, d) for n, d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if not jobs:
        kinds = sorted({str(d.get("kind")) for _, d in documents if isinstance(d, dict)}) or [
            "nothing"
        ]
        raise SpecError(
            source,
            [
                Problem(
                    "",
                    f"no document with kind: {KIND} (found {', '.join(kinds)}); see examples/ for one",
                )
            ],
        )
    if len(jobs) > 1:
        lines = ", ".join(str(n.start_mark.line + 1) for n, _ in jobs)
        raise SpecError(
            source,
            [Problem("", f"{len(jobs)} TuningJob documents (at lines {lines}); keep one per file")],
        )
    node, document = jobs[0]
    return parse_tuningjob(document, source, node)


def parse_tuningjob(
    document: Mapping[str, Any], source: str = "TuningJob", node: yaml.Node | None = None
) -> TuningJob:
    """Validate a manifest already parsed into Python objects (the operator's body, the pod's env)."""
    try:
        return TuningJob.model_validate(dict(document))
    except ValidationError as e:
        raise SpecError(source, [_problem(err, node) for err in _auto_unions(e.errors())]) from None


# A number-or-auto field (v1alpha1.IntOrAuto, epochs, learningRate) fails once per union
# branch; the user sees one problem at the field itself, saying auto is also accepted.
_AUTO_BRANCH = "literal['auto']"


def _auto_unions(errors: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    errors = list(errors)
    unions = {tuple(e["loc"][:-1]) for e in errors if e["loc"] and e["loc"][-1] == _AUTO_BRANCH}
    merged = []
    for err in errors:
        loc = tuple(err["loc"])
        if loc[:-1] in unions:
            if loc[-1] == _AUTO_BRANCH:
                continue
            err = {**err, "loc": loc[:-1], "msg": f"{err['msg']}, or auto"}
        merged.append(err)
    return merged


def parse_tuningjob_json(text: str, source: str) -> TuningJob:
    try:
        document = json.loads(text)
    except ValueError as e:
        raise SpecError(source, [Problem("", f"not valid JSON: {e}")]) from None
    if not isinstance(document, dict):
        raise SpecError(source, [Problem("", "expected a JSON object holding a TuningJob")])
    return parse_tuningjob(document, source)


def _problem(err: Mapping[str, Any], root: yaml.Node | None) -> Problem:
    loc = tuple(err["loc"])
    field = _dotted(loc)
    line = _line_of(root, loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        parent = _model_at(loc[:-1])
        hint = ""
        if parent is not None:
            known = [f.alias or n for n, f in parent.model_fields.items()]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known fields: {', '.join(known)}"
        return Problem(field, f"unknown field{hint}", line)
    if kind == "missing":
        return Problem(field, "required field is missing", line)
    if kind == "literal_error" and loc[:1] == ("apiVersion",):
        return Problem(field, f"must be {API_VERSION}", line)
    message = str(err["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if (
        "input" in err
        and kind not in ("model_type", "dict_type")
        and not isinstance(err["input"], dict | list)
        and "credentials" not in message  # never echo what may be a key
    ):
        message += f" (got {err['input']!r})"
    return Problem(field, message[:1].lower() + message[1:], line)


def _dotted(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line of the deepest node along `loc` that exists in the document."""
    node, line = root, None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
            if node is not None and isinstance(
                node, yaml.ScalarNode | yaml.SequenceNode | yaml.MappingNode
            ):
                line = node.start_mark.line + 1
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class found by walking `loc` (aliases) from TuningJob."""
    model: type[BaseModel] | None = TuningJob
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        model = model_in(field.annotation)
    return model


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field annotation holds, through Optional, list and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = model_in(arg)
        if found is not None:
            return found
    return None
