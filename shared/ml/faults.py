"""The LOCAL_FAULTS setting: which ML port methods fail on purpose, how, and how often (a local testing aid).

    submit_job=transient:3,register_model=transient:2,begin_create_endpoint=permanent:1

Each entry names a method of `shared.ml.port.MLBackend`, a kind and a count: the method raises the port's
`TransientError` (kind `transient`) or `PermanentError` (`permanent`), or a plain `RuntimeError` (`error`: what a
bug looks like, neither retried by backoff nor failing the run at once, so its message ends in the dead-letter
queue), that many times, then behaves. Pure: the local workspace applies it (chatft_local/workspace/faults.py).

`score@<deployment>=error:N` breaks a deployment instead of a port method: the local model server of every deployment
of that name answers its first N scoring requests with HTTP 500, as a broken model does (a model line's canary that
must be rolled back, e.g. `score@v03=error:1000`).
"""

from __future__ import annotations

import re

from ..config import SettingError

KINDS = ("transient", "permanent", "error")
_ENTRY = re.compile(r"([a-z_]+(?:@[a-z][a-z0-9-]*)?)=([a-z]+):([0-9]+)")
SCORE = "score@"


def port_methods() -> frozenset[str]:
    """The MLBackend protocol's method names."""
    from .port import MLBackend

    return frozenset(n for n, v in vars(MLBackend).items() if callable(v) and not n.startswith("_"))


def parse_faults(text: str) -> dict[str, tuple[str, int]]:
    """`{method: (kind, count)}` from LOCAL_FAULTS. Raises SettingError (naming LOCAL_FAULTS) on an unknown method
    or kind, a repeated method, or anything not of the form `method=kind:count`."""
    faults: dict[str, tuple[str, int]] = {}
    methods = port_methods()
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        match = _ENTRY.fullmatch(entry)
        if not match:
            raise SettingError(f"setting LOCAL_FAULTS: {entry[:60]!r} is not method=kind:count "
                               f"(e.g. submit_job=transient:3)")
        method, kind, count = match.group(1), match.group(2), int(match.group(3))
        if method.startswith(SCORE) and kind != "error":
            raise SettingError(f"setting LOCAL_FAULTS: {method} takes kind error (its deployment answers HTTP 500)")
        if method not in methods and not method.startswith(SCORE):
            raise SettingError(f"setting LOCAL_FAULTS: {method!r} is not a method of the ML port (one of "
                               f"{', '.join(sorted(methods))})")
        if kind not in KINDS:
            raise SettingError(f"setting LOCAL_FAULTS: kind {kind!r} of {method} must be one of {', '.join(KINDS)}")
        if method in faults:
            raise SettingError(f"setting LOCAL_FAULTS names {method} twice")
        faults[method] = (kind, count)
    return faults


def scoring_faults(text: str, deployment: str) -> int:
    """How many scoring requests the deployment named `deployment` answers with HTTP 500 (`score@<name>`), 0 when
    LOCAL_FAULTS does not break it. Malformed text counts as none here (the app's settings check refuses it)."""
    try:
        faults = parse_faults(text)
    except SettingError:
        return 0
    kind_count = faults.get(SCORE + deployment)
    return kind_count[1] if kind_count else 0
