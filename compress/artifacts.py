"""The artifact format: a standard Hugging Face checkpoint folder plus `compress.json`.

`compress.json` (schema_version 1) records where the weights came from and how they were made:
the source model and its sha256, the fully resolved config of the step that made it, library
versions, time taken, creation time, and any metrics measured at creation. Artifacts are built in
a temporary sibling directory and renamed into place only when complete, so a folder with
`compress.json` in it is always a whole artifact.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict

from compress.errors import CompressError
from compress.formats import check_version, load_json, validate

METADATA_FILE = "compress.json"
SCHEMA_VERSION = 1


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str
    kind: str
    sha256: str | None = None


class ArtifactMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    kind: Literal["quantized", "distilled"]
    method: str
    source: SourceInfo
    config: dict[str, Any]
    versions: dict[str, str]
    time_taken_s: float
    created_at: str
    metrics: dict[str, Any] = {}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_meta(directory: str | Path, meta: ArtifactMeta) -> None:
    Path(directory, METADATA_FILE).write_text(meta.model_dump_json(indent=2) + "\n")


def read_meta(directory: str | Path) -> ArtifactMeta:
    path = Path(directory, METADATA_FILE)
    if not path.is_file():
        raise CompressError(f"{directory} is not a compress artifact (no {METADATA_FILE})")
    raw = load_json(path)
    check_version(raw if isinstance(raw, dict) else {}, path, SCHEMA_VERSION)
    return validate(ArtifactMeta, raw, path)


def check_output(dest: str | Path, overwrite: bool) -> Path:
    """Fail early, before any work, if `dest` exists and may not be replaced."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise CompressError(f"output {dest} already exists (pass --overwrite to replace it)")
    if dest.exists() and not dest.is_dir():
        raise CompressError(f"output {dest} exists and is not a directory")
    return dest


@contextmanager
def atomic_dir(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; on success it replaces `dest`, on error it is removed."""
    dest = check_output(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def dir_size_bytes(directory: str | Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in Path(directory).glob(pattern) if f.is_file())
