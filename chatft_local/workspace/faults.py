"""LOCAL_FAULTS applied to the local workspace: the named port methods fail the given number of times, then behave.

How many injected failures each method has had is kept in `<workspace>/faults.json` (under a file lock), keyed
by the LOCAL_FAULTS text: a host restarted with the same setting goes on counting where it stopped instead of
failing anew, and a changed setting starts from zero. Only the app's own backend is wrapped (see
`shared.bootstrap.make_ml_backend`); the workspace's supervisor and tools that open the workspace directly are not.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from shared.ml.faults import parse_faults
from shared.ml.port import PermanentError, TransientError

from .files import file_lock, read_json, write_json

log = logging.getLogger("chatft.workspace")

STATE_FILE = "faults.json"


class FaultCounter:
    """Counts the failures injected per method, across processes and restarts."""

    def __init__(self, root: Path, spec: str):
        self.path = root / STATE_FILE
        self.spec = spec.strip()
        self.faults = parse_faults(self.spec)

    def take(self, method: str) -> str | None:
        """The kind of failure to inject into this call of `method` (and count it), or None: behave."""
        planned = self.faults.get(method)
        if planned is None:
            return None
        kind, times = planned
        with file_lock(self.path.with_suffix(".lock")):
            state = read_json(self.path) or {}
            used = state.get(self.spec, {}) if isinstance(state, dict) else {}
            done = int(used.get(method, 0))
            if done >= times:
                return None
            used[method] = done + 1
            write_json(self.path, {self.spec: used})
        return kind

    def injected(self) -> dict[str, int]:
        """Failures injected so far, per method."""
        state = read_json(self.path) or {}
        return {k: int(v) for k, v in (state.get(self.spec) or {}).items()}


def with_faults(backend: Any, spec: str) -> Any:
    """`backend` unchanged when `spec` is empty, else a wrapper whose port methods fail as `spec` says."""
    if not (spec or "").strip():
        return backend
    return FaultyBackend(backend, FaultCounter(Path(backend.root), spec))


class FaultyBackend:
    """The local workspace with injected failures; every attribute not faulted passes through."""

    def __init__(self, backend: Any, counter: FaultCounter):
        self._backend = backend
        self.counter = counter

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._backend, name)
        if name not in self.counter.faults or not callable(value):
            return value

        @functools.wraps(value)
        def faulty(*args: Any, **kwargs: Any) -> Any:
            kind = self.counter.take(name)
            if kind is not None:
                log.warning("LOCAL_FAULTS: %s fails (%s)", name, kind)
                message = f"injected {kind} failure of {name} (LOCAL_FAULTS)"
                if kind == "transient":
                    raise TransientError(message)
                if kind == "permanent":
                    raise PermanentError(message)
                raise RuntimeError(message)
            return value(*args, **kwargs)

        return faulty
