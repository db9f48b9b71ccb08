"""The local workspace's state files: whole-file JSON replaced atomically, and cross-process locks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` held across threads and processes (jobs, servers and hosts share state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: Path, document: Any, mode: int | None = None) -> None:
    """Replace `path` with `document` in one step: readers see the old file or the new one, never half."""
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}")
    scratch.write_text(json.dumps(document, indent=1, sort_keys=True))
    if mode is not None:
        os.chmod(scratch, mode)
    os.replace(scratch, path)


def read_json(path: Path) -> Any | None:
    """The document at `path`, or None when there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
