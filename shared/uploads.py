"""Which uploads start a run: the one rule the blob trigger (`shared.ingestion`), the Azure Event Grid subscription
(`scripts/postdeploy.sh`/`.ps1`, checked against this module by tests/test_uploads.py) and `chatft upload` share.
Pure: no SDK.

An upload starts a run when its blob name ends with `.jsonl`, in any case (`Data.JSONL` too). The Event Grid
subscription says the same with `subjectEndsWith` = `.jsonl`: Event Grid matches subject filters case-insensitively
unless `isSubjectCaseSensitive` is set (https://learn.microsoft.com/azure/event-grid/subscription-creation-schema),
so both sides agree on `.JSONL`.
"""

from __future__ import annotations

TRAINING_SUFFIX = ".jsonl"


def starts_run(blob_name: str) -> bool:
    """Whether an upload named `blob_name` (a blob name inside TRAINING_CONTAINER) starts a run."""
    return blob_name.lower().endswith(TRAINING_SUFFIX)


def why_ignored(blob_name: str) -> str | None:
    """Why an upload named `blob_name` starts no run (None when it does): the sentence `chatft upload` prints."""
    if starts_run(blob_name):
        return None
    return (f"{blob_name!r} will not start a run: only uploads whose name ends with {TRAINING_SUFFIX} do "
            f"(anything else in the container is left alone)")


def event_grid_subject_filter(container: str) -> dict[str, str]:
    """The Event Grid subscription's subject filter that lets through exactly the uploads that start a run:
    BlobCreated subjects read `/blobServices/default/containers/<container>/blobs/<blob name>`."""
    return {"subjectBeginsWith": f"/blobServices/default/containers/{container}/",
            "subjectEndsWith": TRAINING_SUFFIX}
