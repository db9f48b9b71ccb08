"""`chatft validate FILE`: the checks `ingest` runs on an upload, on a local file, before uploading it.

Exit status: 0 valid, 1 invalid, 2 unusable arguments or an unreadable file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.config import SettingError, Settings
from shared.validation import Validator, read_chunks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="chat JSONL file: one {\"messages\": [...]} object per line")
    parser.add_argument("--json", action="store_true", help="print the full validation report as JSON")
    parser.add_argument("--show", type=int, default=10, metavar="N",
                        help="errors and warnings listed in the summary (default 10)")


def main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except SettingError as exc:
        print(f"chatft validate: {exc}", file=sys.stderr)
        return 2
    validator = Validator(max_record_bytes=settings.validation_max_record_bytes,
                          max_issues=settings.validation_report_max_issues,
                          max_invalid_fraction=settings.validation_max_invalid_fraction)
    try:
        with open(args.file, "rb") as stream:
            for _ in validator.records(read_chunks(stream)):
                pass
    except OSError as exc:
        print(f"chatft validate: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    report = validator.report()
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
        tokens = stats["estimated_tokens"]
        lines.append(f"  about {tokens['total']} tokens ({tokens['assistant']} from the assistant; "
                     f"{stats['token_estimate']})")
    return "\n".join(lines)
