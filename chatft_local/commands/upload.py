"""`chatft upload FILE [--meta key=value ...]`: drop training JSONL into the watched container."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="chat JSONL to upload")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="per-upload override stored as blob metadata (epochs=1, learning_rate=2e-4, keep=true...)")
    parser.add_argument("--name", help="blob name (default: the file's name)")


def main(args: argparse.Namespace) -> int:
    from chatft_local.uploads import upload_training_file
    from shared.config import SettingError, Settings
    from shared.overrides import OverrideError, parse_overrides

    if not args.file.is_file():
        print(f"chatft upload: {args.file} is not a readable file")
        return 2
    metadata = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            print(f"chatft upload: --meta {item!r} is not KEY=VALUE")
            return 2
        metadata[key.strip().lower()] = value.strip()
    try:
        parse_overrides(metadata)  # the app would reject the upload: say so before uploading
        settings = Settings.from_env()
    except OverrideError as exc:
        for p in exc.problems:
            print(f"chatft upload: {p['key']}: {p['message']}")
        return 2
    except SettingError as exc:
        print(f"chatft upload: {exc}")
        return 2
    try:
        name, run_id = upload_training_file(settings, args.file, metadata, args.name)
    except Exception as exc:  # storage unreachable, most often: Azurite not running
        print(f"chatft upload: could not upload to container {settings.training_container!r}: "
              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        print("Is the local host running (`chatft host`), or AzureWebJobsStorage set?")
        return 1
    print(f"uploaded {args.file} as {settings.training_container}/{name}")
    print(f"run id: {run_id}   follow it with: chatft runs {run_id}")
    return 0
