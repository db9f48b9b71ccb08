"""`chatft validate FILE`: the checks `ingest` runs on an upload, on a local file, before uploading it.

Exit status: 0 valid, 1 invalid, 2 unusable arguments or an unreadable file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from shared.config import SettingError, Settings
from shared.ml.training_params import NOTEBOOK_DEFAULTS
from shared.tokens import budget
from shared.validation import Validator, read_chunks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="chat JSONL file: one {\"messages\": [...]} object per line")
    parser.add_argument("--json", action="store_true", help="print the full validation report as JSON")
    parser.add_argument("--show", type=int, default=10, metavar="N",
                        help="errors and warnings listed in the summary (default 10)")
    parser.add_argument("--max-seq-length", type=int, default=None, metavar="N",
                        help="the run's max_seq_length (default: the local base model's); records longer are "
                             "truncated in training")
    parser.add_argument("--epochs", type=float, default=None, metavar="N",
                        help="epochs, for the training-token total (default: the base model's, else 3)")


def main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except SettingError as exc:
        print(f"chatft validate: {exc}", file=sys.stderr)
        return 2
    if args.max_seq_length is not None and args.max_seq_length < 1:
        print("chatft validate: --max-seq-length must be a positive number of tokens", file=sys.stderr)
        return 2
    overrides = {"max_seq_length": args.max_seq_length, "num_train_epochs": args.epochs}
    plan = budget(settings.tokenizer_dir, overrides, _hints(settings),
                  default_epochs=NOTEBOOK_DEFAULTS["num_train_epochs"])
    if args.max_seq_length:
        plan = plan._replace(max_seq_length_source="--max-seq-length")
    validator = Validator(max_record_bytes=settings.validation_max_record_bytes,
                          max_issues=settings.validation_report_max_issues,
                          max_invalid_fraction=settings.validation_max_invalid_fraction,
                          max_seq_length=plan.max_seq_length, max_seq_length_source=plan.max_seq_length_source,
                          counter=plan.counter, epochs=plan.epochs, token_note=plan.note,
                          expected_bytes=_size(args.file))
    try:
        with open(args.file, "rb") as stream:
            for _ in validator.records(read_chunks(stream)):
                pass
    except OSError as exc:
        print(f"chatft validate: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    report = validator.report().model_dump(mode="json")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(summary(args.file, report, max(args.show, 0)))
    return 0 if report["ok"] else 1


def summary(name: str, report: dict[str, Any], show: int) -> str:
    """A few lines a person reads: verdict, counts, the first issues with line numbers, counts per code."""
    verdict = "valid" if report["ok"] else f"INVALID: {report['reason']}"
    lines = [f"{name}: {verdict}",
             f"  records {report['records']}, valid {report['valid_records']}, invalid {report['invalid_records']}, "
             f"blank lines {report['blank_lines']}, {report['bytes']} bytes"]
    for kind in ("errors", "warnings"):
        counts = report[f"{kind[:-1]}_counts"]
        if not counts:
            continue
        total = sum(counts.values())
        listed = report[kind][:show]
        lines.append(f"  {kind} ({total}): " + ", ".join(f"{code} {n}" for code, n in
                                                         sorted(counts.items(), key=lambda kv: -kv[1])))
        lines += [f"    line {issue['line']}: {issue['code']}: {issue['message']}" for issue in listed]
        if total > len(listed):
            lines.append(f"    ... {total - len(listed)} more (--json for the report)")
    stats = report["stats"]
    per_record = stats["messages_per_record"]
    if per_record["mean"] is not None:
        roles = stats["messages_per_role"]
        lines.append(f"  messages per record: min {per_record['min']}, mean {per_record['mean']}, "
                     f"max {per_record['max']}; system {roles['system']}, user {roles['user']}, "
                     f"assistant {roles['assistant']}")
        lines += token_lines(report["tokens"])
    return "\n".join(lines)


def token_lines(tokens: dict[str, Any], width: int = 30) -> list[str]:
    """The token budget for a person: how counted, the distribution with a small text histogram, what truncation
    cuts, and the training tokens x epochs (what GPU time scales with)."""
    if not tokens.get("records"):
        return []
    sample = tokens.get("sample")
    how = (f"; {tokens['records_counted']} records counted one by one, the distribution of the other "
           f"{tokens['records_bounded']} (all shorter than max_seq_length) from a uniform sample of "
           f"{sample['records']}, total within ±{sample['record_tokens_error_95']} at 95%" if sample else "")
    lines = [f"  tokens per record ({tokens['method']}"
             + (f"; {tokens['note']}" if tokens.get("note") else "") + how + "):",
             f"    min {tokens['min']}, p50 {tokens['p50']}, p95 {tokens['p95']}, max {tokens['max']}"]
    rows = tokens["histogram"]
    most = max(n for _, _, n in rows)
    for low, high, n in rows:
        bar = "#" * max(1, round(width * n / most))
        lines.append(f"    {low:>7}-{high:<7} {bar} {n}")
    limit = tokens["max_seq_length"]
    if limit:
        source = f" ({tokens['max_seq_length_source']})" if tokens.get("max_seq_length_source") else ""
        lines.append(f"  max_seq_length {limit}{source}: {tokens['truncated_records']} record(s) truncated, "
                     f"{tokens['tokens_cut']} tokens cut")
    else:
        lines.append("  max_seq_length unknown (--max-seq-length N): truncation not checked")
    epochs = tokens.get("epochs")
    total = f" x {epochs:g} epochs = {tokens['trained_tokens_total']}" if epochs else ""
    lines.append(f"  training tokens: {tokens['trained_tokens_per_epoch']} per epoch{total} (all records; the "
                 "upload's test split is left out of training)")
    return lines


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _hints(settings: Settings) -> tuple[str, dict] | None:
    """The local base model's tokenizer and defaults when the local runtime fine-tunes (nothing is built)."""
    if settings.ml_backend != "local":
        return None
    from chatft_local.workspace.base_model import base_model_hints

    return base_model_hints(settings.chatft_state_dir, settings.local_base_model)
