"""The local host's function key: made once per state dir, kept in an owner-only file, compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "function.key"


def key_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / KEY_FILE


def function_key(state_dir: str | os.PathLike) -> str:
    """The function key kept under `state_dir`, created (mode 0600) on first use."""
    path = key_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)  # tighten a file copied in or created by hand
        key = path.read_text().strip()
        if key:
            return key
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def key_matches(presented: str | None, key: str) -> bool:
    """True when the presented key (header or `code` query) is the function key."""
    return presented is not None and hmac.compare_digest(presented.encode(), key.encode())
