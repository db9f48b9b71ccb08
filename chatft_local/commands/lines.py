"""`chatft lines [LINE] [--json]`: the model lines, or one line's deployments (traffic, version, run, kept until)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("line", nargs="?", help="one model line (e.g. support-bot)")
    parser.add_argument("--json", action="store_true", help="print the view as JSON (as GET /api/lines shows it)")


def services(command: str):
    """The app's services as the host builds them (the environment, then local.settings.json), or an exit code."""
    from chatft_local.commands.cleanup import _storage_reachable
    from chatft_local.hosting.indexing import read_local_settings
    from shared.bootstrap import bootstrap
    from shared.config import SettingError, Settings

    try:
        settings = Settings.from_env({**read_local_settings(Path.cwd() / "local.settings.json"), **os.environ})
    except SettingError as exc:
        print(f"chatft {command}: {exc}", file=sys.stderr)
        return 2
    if not _storage_reachable(settings.storage_connection):
        print(f"chatft {command}: storage is not reachable: is Azurite running? `chatft host` starts it",
              file=sys.stderr)
        return 1
    return bootstrap(settings)


def table(view: dict) -> list[str]:
    out = [f"line {view['line']}: endpoint {view['endpoint']} ({view.get('provisioning_state') or 'absent'}), "
           f"versions {', '.join(view.get('versions') or []) or '-'}",
           f"  {'DEPLOYMENT':<11} {'TRAFFIC':>7}  {'VERSION':<8} {'RUN':<34} {'STATE':<10} {'SERVED':<18} KEPT UNTIL"]
    for d in view.get("deployments") or []:
        served = d.get("served") or {}
        said = f"{served.get('requests', 0)} req {served.get('errors', 0)} err" if served else "-"
        out.append(f"  {d['name']:<11} {d['traffic']:>6}%  {d['model_version'] or '-':<8} {d['run_id'] or '-':<34} "
                   f"{d['run_state'] or '-':<10} {said:<18} {d['standby_until'] or '-'}")
    return out


def main(args: argparse.Namespace) -> int:
    from shared.ml.port import MLBackendError
    from shared.rollout import NoSuchLine, line_view, lines_view

    svc = services("lines")
    if isinstance(svc, int):
        return svc
    try:
        views = [line_view(svc, args.line)] if args.line else lines_view(svc)["lines"]
    except NoSuchLine as exc:
        print(f"chatft lines: {exc}", file=sys.stderr)
        return 1
    except MLBackendError as exc:
        print(f"chatft lines: the ML workspace could not be read: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(views[0] if args.line else {"lines": views}, indent=2))
        return 0
    if not views:
        print("no model lines yet: upload to a folder (support-bot/data.jsonl) to start one")
    for view in views:
        print("\n".join(table(view)) if "error" not in view else f"line {view['line']}: {view['error']}")
    return 0
