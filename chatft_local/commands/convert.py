"""`chatft convert IN OUT [--from FORMAT]`: turn ShareGPT, Alpaca, prompt/completion, JSON arrays, pretty-printed
JSON, chat JSONL with extra keys, Parquet or a local Hugging Face dataset directory into chat JSONL.

Says what it detected, names every record it leaves out with the reason (the first --show on the terminal, all of
them with --dropped FILE), and writes only records `chatft validate` accepts, with the same token budget
(`--max-seq-length`, else the local base model's). Exit status: 0 the output is a valid upload, 1 it is not (no or
too few records), 2 unusable arguments or an unreadable input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shared.config import SettingError, Settings
from shared.ml.training_params import NOTEBOOK_DEFAULTS
from shared.tokens import budget
from shared.validation import Validator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from chatft_local.convert import FORMATS

    parser.add_argument("input", metavar="IN", help="a file (JSONL, JSON, Parquet) or a local Hugging Face dataset "
                                                    "directory (save_to_disk's, or a folder of Parquet files)")
    parser.add_argument("output", metavar="OUT", help="the chat JSONL file to write")
    parser.add_argument("--from", dest="source_format", choices=FORMATS, default="auto",
                        help="input format: sharegpt, alpaca, prompt-completion (records of that shape, in any "
                             "container), json (a JSON array or objects of chat records), jsonl (chat JSONL); "
                             "default auto: detected and said")
    parser.add_argument("--max-seq-length", type=int, default=None, metavar="N",
                        help="leave out records whose assistant text training would cut (as chatft validate)")
    parser.add_argument("--show", type=int, default=20, metavar="N", help="dropped records listed (default 20)")
    parser.add_argument("--dropped", metavar="FILE", help="write every dropped record's position and reason "
                                                          "(JSON Lines)")


def main(args: argparse.Namespace) -> int:
    from chatft_local.commands.validate import _hints
    from chatft_local.convert import ConvertError, convert, open_source

    try:
        settings = Settings.from_env()
    except SettingError as exc:
        return _fail(str(exc))
    source_path, out_path = Path(args.input), Path(args.output)
    if out_path.exists() and source_path.exists() and out_path.resolve() == source_path.resolve():
        return _fail("OUT must not be IN")
    if args.max_seq_length is not None and args.max_seq_length < 1:
        return _fail("--max-seq-length must be a positive number of tokens")
    plan = budget(settings.tokenizer_dir, {"max_seq_length": args.max_seq_length}, _hints(settings),
                  default_epochs=NOTEBOOK_DEFAULTS["num_train_epochs"])
    # Records over the line limit and invalid ones are dropped one by one, so the policy here lets all through.
    validator = Validator(max_record_bytes=settings.validation_max_record_bytes, max_issues=0,
                          max_invalid_fraction=1.0, max_seq_length=plan.max_seq_length,
                          max_seq_length_source=plan.max_seq_length_source, counter=plan.counter)
    container = args.source_format if args.source_format in ("json", "jsonl") else "auto"
    record_format = {"json": "chat", "jsonl": "chat", "auto": None}.get(args.source_format, args.source_format)
    shown = [0]
    dropped_file = open(args.dropped, "w", encoding="utf-8") if args.dropped else None

    def on_drop(unit: str, position: int, reason: str) -> None:
        if shown[0] < args.show:
            print(f"  dropped {unit} {position}: {reason}", file=sys.stderr)
        shown[0] += 1
        if dropped_file:
            dropped_file.write(json.dumps({unit: position, "reason": reason}) + "\n")

    scratch = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        source = open_source(source_path, container)
        print(f"chatft convert: reading {source_path} ({source.container})", file=sys.stderr)
        with open(scratch, "wb") as out:
            outcome = convert(source, record_format, out.write, validator, on_drop)
        os.replace(scratch, out_path)  # OUT appears whole or not at all
    except ConvertError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or source_path}: {exc.strerror or exc}")
    finally:
        scratch.unlink(missing_ok=True)
        if dropped_file:
            dropped_file.close()
    print(f"detected: {outcome.detected}", file=sys.stderr)
    if shown[0] > args.show:
        print(f"  ... {shown[0] - args.show} more dropped" + (" (all in --dropped FILE)" if args.dropped
                                                               else " (--dropped FILE lists them all)"),
          file=sys.stderr)
    if outcome.reasons:
        print("  dropped by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(outcome.reasons.items(),
                                                                              key=lambda kv: -kv[1])),
              file=sys.stderr)
    if outcome.removed_keys:
        print("  keys left out (training ignores them): " + ", ".join(
            f"{k} ({n})" for k, n in sorted(outcome.removed_keys.items())), file=sys.stderr)
    print(f"{out_path}: {outcome.written} records written, {outcome.dropped} dropped, of {outcome.read} read")
    from shared.validation import MIN_RECORDS

    if outcome.written < MIN_RECORDS:
        print(f"chatft convert: {outcome.written} record(s) are fewer than Azure ML fine-tuning needs "
              f"({MIN_RECORDS})", file=sys.stderr)
        return 1
    return 0


def _fail(message: str) -> int:
    print(f"chatft convert: {message}", file=sys.stderr)
    return 2
