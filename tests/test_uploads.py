"""Which uploads start a run: one rule (shared/uploads.py) that the app's blob trigger, the Azure Event Grid
subscription made by the postdeploy hooks, and `chatft upload` all follow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.uploads import TRAINING_SUFFIX, event_grid_subject_filter, starts_run, why_ignored

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["data.jsonl", "Team/Data.JSONL", "a.b.JsonL", "data.json", "data.jsonl.gz", "data.jsonl.txt", "notes.txt",
         "jsonl", "data.jsonl/", "x.jsonlx", ".jsonl", "dir.jsonl/file.csv"]


def event_grid_lets_through(subject_filter: dict[str, str], subject: str) -> bool:
    """Event Grid's subject filter: prefix and suffix matches, case-insensitive unless isSubjectCaseSensitive
    (https://learn.microsoft.com/azure/event-grid/subscription-creation-schema)."""
    subject = subject.lower()
    return (subject.startswith(subject_filter.get("subjectBeginsWith", "").lower())
            and subject.endswith(subject_filter.get("subjectEndsWith", "").lower()))


def blob_created_subject(container: str, blob_name: str) -> str:
    return f"/blobServices/default/containers/{container}/blobs/{blob_name}"


@pytest.mark.parametrize("name", NAMES)
def test_event_grid_filter_lets_through_exactly_the_names_that_start_a_run(name):
    flt = event_grid_subject_filter("training-data")
    assert event_grid_lets_through(flt, blob_created_subject("training-data", name)) == starts_run(name)
    assert not event_grid_lets_through(flt, blob_created_subject("other", name))


def test_the_rule():
    assert [n for n in NAMES if starts_run(n)] == ["data.jsonl", "Team/Data.JSONL", "a.b.JsonL", ".jsonl"]
    assert why_ignored("data.jsonl") is None
    assert "will not start a run" in why_ignored("data.json") and TRAINING_SUFFIX in why_ignored("data.json")


def _option(text: str, option: str) -> list[str]:
    """Every value the script passes after `option` (shell or PowerShell quoting)."""
    found = re.findall(re.escape(option) + r"""['"]?,?\s+(?:"([^"]*)"|'([^']*)'|([^\s)]+))""", text)
    return [next(v for v in groups if v) for groups in found]


@pytest.mark.parametrize("hook", ["postdeploy.sh", "postdeploy.ps1"])
def test_the_postdeploy_hooks_filter_uploads_by_the_same_rule(hook):
    text = (ROOT / "scripts" / hook).read_text()
    flt = event_grid_subject_filter("$TRAINING_CONTAINER")
    assert _option(text, "--subject-ends-with") == [flt["subjectEndsWith"]]
    begins = [v.replace("$($env:TRAINING_CONTAINER)", "$TRAINING_CONTAINER") for v in
              _option(text, "--subject-begins-with")]
    assert begins == [flt["subjectBeginsWith"]]
    assert "--subject-case-sensitive" not in text  # the rule is case-insensitive, as Event Grid's default


def test_the_doctor_expects_the_same_filter():
    from chatft_local.doctor import expected_subscriptions
    from shared.config import Settings

    sub = expected_subscriptions(Settings.from_env({"TRAINING_CONTAINER": "uploads"}))["ingest-blob-created"]
    flt = event_grid_subject_filter("uploads")
    assert (sub.subject_begins_with, sub.subject_ends_with) == (flt["subjectBeginsWith"], flt["subjectEndsWith"])
