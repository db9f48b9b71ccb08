"""Duplicate uploads: the same bytes with the same settings train once.

While ingest streams an upload it feeds every chunk to a `ContentDigest` (SHA-256; no second read). An upload that
passed validation then claims its *data key* — the content hash and the training settings (the upload's overrides
but `force`, and the base model they resolve to) — in the run store, insert-if-absent, so of two identical uploads
arriving at once exactly one claims it. A later upload whose key is held by a run that trained or is on its way
ends Rejected with "same data and settings as run X" and a link to X, and starts no job. A holder that ended Failed
or Rejected does not count: re-uploading after a failure trains, and the new run takes the claim over (by
compare-and-swap, so again only one does). An upload with the override `force=true` trains whatever ran before.
Pure apart from the `Runs` port: no SDK.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Iterable, Iterator

from .bootstrap import Services
from .runs import Run, State

log = logging.getLogger(__name__)

# Holders that do not stop a re-upload: their data never became a model, or the attempt failed.
_RETRAINABLE = (State.FAILED, State.REJECTED)
_MAX_TAKEOVERS = 5  # each lost takeover means another writer moved the claim; after a few, the run is a duplicate


class ContentDigest:
    """SHA-256 of the bytes that pass through `through`, as ingest streams an upload."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def through(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._sha.update(chunk)
            self.size += len(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def data_key(content_sha256: str, overrides: dict[str, Any], default_base_model: str) -> str:
    """The key two uploads share when they would train the same thing: hex SHA-256 over the content hash and the
    typed overrides (but `force`), with the base model they resolve to."""
    settings = {k: v for k, v in overrides.items() if k != "force"}
    settings.setdefault("base_model", default_base_model)
    doc = json.dumps({"content_sha256": content_sha256, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def run_link(run_id: str) -> str:
    return f"/api/runs/{run_id}"


def earlier_run(svc: Services, run_id: str, key: str) -> Run | None:
    """The earlier run holding `key` when it trained or is on its way to (this upload is then a duplicate), else
    None once `run_id` holds the key itself."""
    for _ in range(_MAX_TAKEOVERS):
        holder = svc.runs.claim(key, run_id)
        if holder == run_id:
            return None
        earlier = svc.runs.find(holder)
        if earlier is not None and earlier.state not in _RETRAINABLE:
            return earlier
        if svc.runs.pass_claim(key, holder, run_id):
            log.info("ingest: run %s takes over data key %s from run %s (%s)", run_id, key[:12], holder,
                     earlier.state if earlier else "gone")
            return None
    holder = svc.runs.claim(key, run_id)
    return None if holder == run_id else svc.runs.find(holder)


def end_if_duplicate(svc: Services, run_id: str, content_sha256: str, overrides: dict[str, Any],
                     report: dict[str, Any]) -> Run | None:
    """End the Validating run `run_id` as a duplicate when an earlier run holds its data key (returns it ended),
    else None: the run trains. `report` is the summary kept on the run; `force=true` skips the check."""
    if overrides.get("force"):
        return None
    key = data_key(content_sha256, overrides, svc.settings.base_model)
    earlier = earlier_run(svc, run_id, key)
    if earlier is None:
        return None
    detail = (f"same data and settings as run {earlier.run_id} ({run_link(earlier.run_id)}, {earlier.state}); "
              f"no second job. Upload again with the override force=true to train anyway")
    if earlier.redeployable():
        detail += f", or POST {run_link(earlier.run_id)}/deploy to deploy its model again"
    log.info("ingest: run %s is a duplicate of run %s", run_id, earlier.run_id)
    return svc.runs.update(run_id, lambda r: r.advance(State.REJECTED, svc.clock(), detail, report=report,
                                                        duplicate_of=earlier.run_id, from_states=(State.VALIDATING,)))
