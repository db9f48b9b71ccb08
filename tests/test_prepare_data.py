"""`chatft prepare-data` on small local datasets (no hub here), and its upload to Azurite."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import orjson
import pytest

from chatft_local.cli import main as chatft
from chatft_local.commands.prepare_data import ultrachat_record
from shared.validation import validate_chunks

from .conftest import PROJECT_ROOT


def rows(split: str, n: int) -> list[dict]:
    return [{"prompt": f"{split} question {i}", "prompt_id": f"{split}-{i}",
             "messages": [{"content": f"{split} question {i}", "role": "user"},
                          {"content": f"{split} answer {i}", "role": "assistant"}]} for i in range(n)]


def write_jsonl(path, records) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def read_jsonl(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def dataset(tmp_path):
    """A folder dataset in ultrachat's layout: one JSONL file per split."""
    folder = tmp_path / "ultrachat_tiny"
    folder.mkdir()
    write_jsonl(folder / "train_sft.jsonl", rows("train_sft", 40))
    write_jsonl(folder / "test_sft.jsonl", rows("test_sft", 20))
    (folder / "README.md").write_text("ignored: not a data file")
    return folder


def test_writes_the_first_percent_of_each_split(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert chatft(["prepare-data", "--dataset", str(dataset), "--split-pc", "25", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["test_sft.jsonl", "train_sft.jsonl"]
    assert read_jsonl(out / "train_sft.jsonl") == rows("train_sft", 40)[:10]
    assert read_jsonl(out / "test_sft.jsonl") == rows("test_sft", 20)[:5]
    assert f"{out / 'train_sft.jsonl'}: 10 records (25% of split train_sft)" in capsys.readouterr().out


def test_the_output_passes_the_validator(dataset, tmp_path):
    out = tmp_path / "out"
    assert chatft(["prepare-data", "--dataset", str(dataset), "--split-pc", "100", "--out", str(out)]) == 0
    report = validate_chunks([(out / "train_sft.jsonl").read_bytes()]).model_dump()
    assert report["ok"] and report["valid_records"] == 40 and report["warning_counts"] == {}


def test_a_single_parquet_file_becomes_its_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows("train", 10)), source)
    out = tmp_path / "out"
    assert chatft(["prepare-data", "--dataset", str(source), "--split-pc", "50", "--out", str(out)]) == 0
    assert read_jsonl(out / "train.jsonl") == rows("train", 10)[:5]


def test_records_get_ultrachat_shape():
    record = ultrachat_record({"messages": [{"role": "system", "content": "s", "name": None},
                                            {"role": "user", "content": "hello"},
                                            {"role": "assistant", "content": "hi"}], "source": "web"})
    assert record == {"prompt": "hello", "prompt_id": hashlib.sha256(b"hello").hexdigest(),
                      "messages": [{"content": "s", "role": "system"}, {"content": "hello", "role": "user"},
                                   {"content": "hi", "role": "assistant"}]}
    assert list(record) == ["prompt", "messages", "prompt_id"]


def test_a_dataset_without_messages_is_refused(tmp_path, capsys):
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "q", "completion": "a"}] * 3)
    assert chatft(["prepare-data", "--dataset", str(folder), "--split-pc", "100", "--out",
                   str(tmp_path / "out")]) == 2
    assert "no 'messages' column" in capsys.readouterr().err


def test_a_split_too_small_for_the_percentage_is_reported(tmp_path, capsys):
    folder = tmp_path / "tiny"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows("train", 3))
    assert chatft(["prepare-data", "--dataset", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read split train" in capsys.readouterr().err


@pytest.mark.parametrize("pc", ["0", "101", "-5"])
def test_split_pc_out_of_range_is_refused(dataset, tmp_path, pc, capsys):
    assert chatft(["prepare-data", "--dataset", str(dataset), "--split-pc", pc, "--out", str(tmp_path)]) == 2
    assert "--split-pc must be from 1 to 100" in capsys.readouterr().err


def test_a_fractional_split_pc_is_an_argument_error(dataset, tmp_path):
    with pytest.raises(SystemExit) as exited:
        chatft(["prepare-data", "--dataset", str(dataset), "--split-pc", "2.5", "--out", str(tmp_path)])
    assert exited.value.code == 2


def test_a_folder_without_data_files_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert chatft(["prepare-data", "--dataset", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "expected .jsonl, .json or .parquet" in capsys.readouterr().err


def test_an_unreachable_hub_dataset_exits_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "chatft_local", "prepare-data", "--dataset",
                             "HuggingFaceH4/ultrachat_200k", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=120)
    assert result.returncode == 2
    assert "not a local path" in result.stderr and "Traceback" not in result.stderr


def test_upload_needs_a_training_split(tmp_path, capsys):
    folder = tmp_path / "evalonly"
    folder.mkdir()
    write_jsonl(folder / "test_sft.jsonl", rows("test_sft", 4))
    assert chatft(["prepare-data", "--dataset", str(folder), "--split-pc", "100", "--out", str(tmp_path / "out"),
                   "--upload"]) == 2
    assert "no train_sft or train split to upload" in capsys.readouterr().err


def test_upload_puts_the_training_split_into_the_watched_container(dataset, tmp_path, settings, monkeypatch,
                                                                     capsys):
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("AzureWebJobsStorage", settings.storage_connection)
    monkeypatch.setenv("TRAINING_CONTAINER", settings.training_container)
    out = tmp_path / "out"
    assert chatft(["prepare-data", "--dataset", str(dataset), "--split-pc", "50", "--out", str(out),
                   "--upload"]) == 0
    container = BlobServiceClient.from_connection_string(settings.storage_connection).get_container_client(
        settings.training_container)
    assert [b.name for b in container.list_blobs()] == ["ultrachat-tiny-train-sft.jsonl"]
    blob = container.download_blob("ultrachat-tiny-train-sft.jsonl").readall()
    assert blob == (out / "train_sft.jsonl").read_bytes()
    printed = capsys.readouterr().out
    assert f"{settings.training_container}/ultrachat-tiny-train-sft.jsonl" in printed
    assert "AccountKey" not in printed

    # Again under a chosen name, into the container that now exists.
    assert chatft(["prepare-data", "--dataset", str(dataset), "--split-pc", "10", "--out", str(out), "--upload",
                   "--blob-name", "mine.jsonl"]) == 0
    assert sorted(b.name for b in container.list_blobs()) == ["mine.jsonl", "ultrachat-tiny-train-sft.jsonl"]
