"""`chatft upload FILE [--meta key=value ...] [--name BLOB] [--force]`: drop training JSONL into the watched container.

A name that starts no run (`shared.uploads.starts_run`: only `.jsonl` does) is refused with exit status 2 unless
`--force`; then the file is uploaded and no run id is printed, since none will exist."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="chat JSONL to upload")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="per-upload override stored as blob metadata (epochs=1, learning_rate=2e-4, keep=true...)")
    parser.add_argument("--name", help="blob name (default: the file's name)")
    parser.add_argument("--force", action="store_true",
                        help="upload even when the name will not start a run (only .jsonl names do)")


def main(args: argparse.Namespace) -> int:
    from chatft_local.uploads import default_blob_name, upload_training_file
    from shared.config import SettingError, Settings
    from shared.overrides import OverrideError, parse_overrides
    from shared.uploads import why_ignored

    if not args.file.is_file():
        print(f"chatft upload: {args.file} is not a readable file")
        return 2
    ignored = why_ignored(args.name or default_blob_name(args.file))
    if ignored and not args.force:
        print(f"chatft upload: {ignored}. Rename the file or pass --name <name>.jsonl; --force uploads it anyway, "
              f"starting no run")
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
    if run_id is None:
        print(f"no run: {ignored}")
    else:
        print(f"run id: {run_id}   follow it with: chatft runs {run_id}")
    return 0
