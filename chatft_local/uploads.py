"""Uploading training files to the watched container, as a user of the deployed app would."""

from __future__ import annotations

from pathlib import Path

from shared.config import Settings
from shared.runs import run_id_for, slug
from shared.storage import Blobs


def upload_training_file(settings: Settings, path: Path, metadata: dict[str, str] | None = None,
                         blob_name: str | None = None) -> tuple[str, str]:
    """Upload `path` (streamed) to TRAINING_CONTAINER; returns (blob name, the run id the app will give it)."""
    name = blob_name or f"{slug(path.stem, 60) or 'upload'}.jsonl"
    blob = Blobs(settings).blob(settings.training_container, name)
    from azure.storage.blob import ContentSettings

    with path.open("rb") as f:
        result = blob.upload_blob(f, overwrite=True, metadata=metadata or None, max_concurrency=2,
                                  content_settings=ContentSettings(content_type="application/jsonl"))
    return name, run_id_for(settings.training_container, name, str(result["etag"]))
