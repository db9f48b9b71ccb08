"""`chatft prepare-data`: the notebook's `download-dataset.py` for this app.

Writes the first `--split-pc` percent of each split (`<split>[0%:<pc>%]`, as the notebook does) of a dataset — a
Hugging Face hub id such as HuggingFaceH4/ultrachat_200k, or a local JSONL/parquet file or folder of them, one file
per split — as `<out>/<split>.jsonl` in the ultrachat record shape `{prompt, messages, prompt_id}`. `--upload`
then drops the training split into the watched container, which starts a run.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import orjson

from shared.runs import slug

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TRAIN_SPLITS = ("train_sft", "train")  # the split uploaded by --upload: the first present


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="HuggingFaceH4/ultrachat_200k",
                        help="hub dataset id, or a local .jsonl/.parquet file or folder of them (one per split)")
    parser.add_argument("--subset", help="hub dataset configuration, if it has several")
    parser.add_argument("--split-pc", type=int, default=5, metavar="PC",
                        help="percentage of each split to keep, from its start (1-100, default 5)")
    parser.add_argument("--out", default="data", metavar="DIR", help="where to write <split>.jsonl (default data)")
    parser.add_argument("--upload", action="store_true",
                        help="upload the training split (train_sft, else train) to TRAINING_CONTAINER")
    parser.add_argument("--blob-name", help="blob name for --upload (default <dataset>-<split>.jsonl)")
    parser.add_argument("--cache-dir", help="datasets cache for hub downloads (default: the datasets default)")


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.split_pc <= 100:
        return _fail("--split-pc must be from 1 to 100")
    local = Path(args.dataset)
    try:
        with tempfile.TemporaryDirectory(prefix="chatft-prepare-") as scratch:
            part = f"[0%:{args.split_pc}%]"
            if local.exists():
                splits = _local_splits(local, part, cache_dir=scratch)  # local files need no lasting cache
            else:
                splits = _hub_splits(args.dataset, args.subset, part, args.cache_dir)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            written = {}
            for name, dataset in splits:
                if "messages" not in dataset.column_names:
                    columns = ", ".join(dataset.column_names)
                    return _fail(f"split {name} has no 'messages' column (columns: {columns})")
                path = out / f"{name}.jsonl"
                with open(path, "wb") as stream:
                    for row in dataset:
                        stream.write(orjson.dumps(ultrachat_record(row)) + b"\n")
                written[name] = path
                print(f"{path}: {len(dataset)} records ({args.split_pc}% of split {name})")
    except _DatasetError as exc:
        return _fail(str(exc))
    if not args.upload:
        return 0
    train = next((written[s] for s in TRAIN_SPLITS if s in written), None)
    if train is None:
        return _fail(f"no {' or '.join(TRAIN_SPLITS)} split to upload (splits: {', '.join(written)})")
    blob_name = args.blob_name or f"{slug(Path(args.dataset).stem) or 'dataset'}-{slug(train.stem)}.jsonl"
    from shared.uploads import why_ignored

    ignored = why_ignored(blob_name)
    if ignored:  # as `chatft upload` does: never print a run id that will not exist
        return _fail(f"--blob-name: {ignored}")
    return upload(train, blob_name)


def ultrachat_record(row: dict[str, Any]) -> dict[str, Any]:
    """A row in ultrachat's shape: messages as {content, role}; prompt and prompt_id derived when absent."""
    messages = row["messages"]
    prompt = row.get("prompt")
    if isinstance(messages, list):
        messages = [{"content": m.get("content"), "role": m.get("role")} if isinstance(m, dict) else m
                    for m in messages]
        if not isinstance(prompt, str):
            prompt = next((m["content"] for m in messages if isinstance(m, dict) and m["role"] == "user"), None)
    if not isinstance(prompt, str):
        prompt = ""
    prompt_id = row.get("prompt_id") or hashlib.sha256(prompt.encode()).hexdigest()  # ultrachat's own rule
    return {"prompt": prompt, "messages": messages, "prompt_id": prompt_id}


def upload(path: Path, blob_name: str) -> int:
    """Stream `path` into TRAINING_CONTAINER as `blob_name` (connection from the settings)."""
    from azure.core.exceptions import AzureError

    from chatft_local.uploads import upload_training_file
    from shared.config import SettingError, Settings

    try:
        settings = Settings.from_env()
    except SettingError as exc:
        return _fail(str(exc))
    try:
        name, run_id = upload_training_file(settings, path, blob_name=blob_name)
    except (AzureError, ValueError) as exc:  # ValueError: a malformed connection string
        print(f"chatft prepare-data: upload failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
              file=sys.stderr)
        return 1
    print(f"uploaded {path} to {settings.training_container}/{name}; run id {run_id}")
    return 0


class _DatasetError(Exception):
    pass


def _local_splits(path: Path, part: str, cache_dir: str) -> Iterator[tuple[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_BUILDERS) if path.is_dir() else [path]
    builders = {LOCAL_BUILDERS.get(p.suffix) for p in files}
    if not files or None in builders:
        raise _DatasetError(f"{path}: expected .jsonl, .json or .parquet files")
    if len(builders) > 1:
        raise _DatasetError(f"{path}: mixes JSON and parquet files; keep one kind per folder")
    builder, data_files = builders.pop(), {p.stem: str(p) for p in files}
    for name in data_files:
        try:
            yield name, datasets.load_dataset(builder, data_files=data_files, split=name + part, cache_dir=cache_dir)
        except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as exc:
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise _DatasetError(f"{path}: cannot read split {name}: {first_line[:200]}") from None


def _hub_splits(dataset_id: str, subset: str | None, part: str, cache_dir: str | None) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        names = datasets.get_dataset_split_names(dataset_id, subset, cache_dir=cache_dir)
    except Exception as exc:  # the hub client raises many kinds (offline, not found, gated)
        raise _DatasetError(f"{dataset_id}: not a local path, and the hub has no such dataset or cannot be "
                            f"reached ({type(exc).__name__})") from None
    for name in names:
        print(f"loading split {name} of {dataset_id}", flush=True)
        yield name, datasets.load_dataset(dataset_id, subset, split=name + part, cache_dir=cache_dir)


def _fail(message: str) -> int:
    print(f"chatft prepare-data: {message}", file=sys.stderr)
    return 2
