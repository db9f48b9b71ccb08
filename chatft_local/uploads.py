"""Uploading training files to the watched container, as a user of the deployed app would."""

from __future__ import annotations

from pathlib import Path

from shared.config import Settings
from shared.runs import run_id_for, slug
from shared.storage import Blobs
from shared.uploads import starts_run


def default_blob_name(path: Path) -> str:
    """The blob name for `path`: its stem made safe, and its own suffix (lower case), so `x.json` stays `x.json`
    (and starts no run) rather than being renamed into one."""
    return f"{slug(path.stem, 60) or 'upload'}{path.suffix.lower()}"


def upload_training_file(settings: Settings, path: Path, metadata: dict[str, str] | None = None,
                         blob_name: str | None = None) -> tuple[str, str | None]:
    """Upload `path` (streamed) to TRAINING_CONTAINER; returns (blob name, the run id the app will give it, or None
    when the name starts no run: `shared.uploads.starts_run`)."""
    name = blob_name or default_blob_name(path)
    blob = Blobs(settings).blob(settings.training_container, name)
    from azure.storage.blob import ContentSettings

    with path.open("rb") as f:
        result = blob.upload_blob(f, overwrite=True, metadata=metadata or None, max_concurrency=2,
                                  content_settings=ContentSettings(content_type="application/jsonl"))
    return name, run_id_for(settings.training_container, name, str(result["etag"])) if starts_run(name) else None
