"""`chatft rollback LINE [--json]`: traffic of a model line back to its previous deployment while it is kept."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("line", help="the model line (e.g. support-bot)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    from chatft_local.commands.lines import services
    from shared.ml.port import MLBackendError
    from shared.rollout import LineConflict, NoSuchLine, rollback_line

    svc = services("rollback")
    if isinstance(svc, int):
        return svc
    try:
        result = rollback_line(svc, args.line, by="chatft rollback")
    except (NoSuchLine, LineConflict) as exc:
        print(f"chatft rollback: {exc}", file=sys.stderr)
        return 1
    except MLBackendError as exc:
        print(f"chatft rollback: the ML workspace could not be asked: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"line {result['line']}: {result['serving']} (run {result['serving_run']}) serves again; "
              f"{result['rolled_back']} (run {result['rolled_back_run']}) taken out of service and deleted")
    return 0
