"""Reading the project's versioned files (eval/bench results, manifests, recipes, artifact metadata) the same way:
existence, parse, `kind`, `schema_version`, then pydantic validation — each failure one CompressError line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from compress.errors import CompressError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every file-format model: unknown keys are an error, not silently dropped."""
    model_config = ConfigDict(extra="forbid")


def validation_message(e: ValidationError) -> str:
    """'loc.path: message' for the first error, without pydantic's 'Value error, ' prefix."""
    err = e.errors()[0]
    return f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"


def check_version(raw: dict, path: Path, version: int) -> None:
    found = raw.get("schema_version")
    if found != version:
        raise CompressError(f"{path}: unknown schema_version {found!r} (this compress reads {version})")


def read_yaml_mapping(path: str | Path, what: str, not_mapping: str) -> dict:
    """A YAML file whose top level is a mapping (recipes, manifests); `not_mapping` says what it should hold."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CompressError(f"{what} not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CompressError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise CompressError(f"{path}: {not_mapping}")
    return raw


def load_json(path: Path):
    """A JSON file's content; a parse error is one CompressError line naming the file and line."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CompressError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from e


def read_versioned_json(path: str | Path, kind: str, what: str, version: int) -> dict:
    """A JSON object with `kind` and `schema_version` as this compress writes them."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"{what} not found: {path}")
    raw = load_json(path)
    if not isinstance(raw, dict) or raw.get("kind") != kind:
        raise CompressError(f"{path} is not a compress {what} (kind != '{kind}')")
    check_version(raw, path, version)
    return raw


def validate(model: type[M], raw: dict, path: str | Path) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise CompressError(f"{path}: {validation_message(e)}") from e
