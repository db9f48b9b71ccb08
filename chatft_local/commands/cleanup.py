"""`chatft cleanup [--dry-run] [--as-of ISO-TIME] [--json]`: apply the idle-endpoint policy now, as the timer does."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timezone
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="report what would be deleted; delete nothing")
    parser.add_argument("--as-of", metavar="ISO-TIME",
                        help="evaluate the policy at this time (e.g. 2026-01-02T02:00:00Z) instead of now")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def main(args: argparse.Namespace) -> int:
    from chatft_local.hosting.indexing import read_local_settings
    from shared.config import SettingError, Settings
    from shared.runs import parse_iso

    try:
        # The same settings the host reads: the environment first, then local.settings.json.
        settings = Settings.from_env({**read_local_settings(Path.cwd() / "local.settings.json"), **os.environ})
    except SettingError as exc:
        return _error(str(exc), 2)
    as_of = None
    if args.as_of:
        try:
            as_of = parse_iso(args.as_of)
        except ValueError:
            return _error(f"--as-of {args.as_of!r} is not an ISO time such as 2026-01-02T02:00:00Z", 2)
        as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc)
    if not _storage_reachable(settings.storage_connection):
        return _error("storage is not reachable: is Azurite running? `chatft host` starts it (or run "
                      "node_modules/.bin/azurite); AzureWebJobsStorage says where it is looked for", 1)

    from shared.bootstrap import bootstrap
    from shared.cleanup import run_cleanup
    from shared.ml.port import MLBackendError

    try:
        summary = run_cleanup(bootstrap(settings), as_of=as_of, dry_run=True if args.dry_run else None)
    except MLBackendError as exc:
        return _error(f"the ML workspace could not be read: {exc}", 1)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    for line in table(summary.to_dict()):
        print(line)
    return 0


def table(summary: dict) -> list[str]:
    """The human view of a cleanup summary."""
    verb = "would delete" if summary["dry_run"] else "deleted"
    lines = [f"cleanup as of {summary['as_of']}{' (dry run)' if summary['dry_run'] else ''}: {verb} "
             f"{len(summary['deleted'])}, kept {len(summary['kept'])}; about {summary['endpoint_hours_saved']:g} "
             f"endpoint-hours saved until the next nightly run",
             f"{'ACTION':<7} {'ENDPOINT':<32} {'RUN':<34} {'REASON':<24} {'IDLE H':>7}  DETAIL"]
    for action, rows in (("delete", summary["deleted"]), ("keep", summary["kept"])):
        for d in rows:
            idle = "" if d["idle_hours"] is None else f"{d['idle_hours']:.1f}"
            where = f"{d['endpoint']}/{d['deployment']}" if d.get("deployment") else d["endpoint"]
            lines.append(f"{action:<7} {where:<32} {d['run_id'] or '-':<34} {d['reason']:<24} {idle:>7}  "
                         f"{d['detail']}")
    standby = summary.get("standby") or []
    if standby:
        lines.append("deployments kept for rollback (at 0% traffic, billed like any deployment):")
        for k in standby:
            when = "deleted now" if k["action"] == "delete" else f"goes at {k['until']}"
            if k["reason"] == "serving_again":
                when = f"takes traffic again: kept (was due {k['until']})"
            lines.append(f"  {k['endpoint']}/{k['deployment']:<10} run {k['run_id']:<34} {when}")
    lines.append(f"report: {summary['report_path']}")
    return lines


def _storage_reachable(connection_string: str) -> bool:
    """One quick request without retries: a stopped Azurite is reported at once, not after the SDK's backoff."""
    from azure.core.exceptions import ServiceRequestError
    from azure.data.tables import TableServiceClient

    client = TableServiceClient.from_connection_string(connection_string, retry_total=0, connection_timeout=3)
    try:
        next(iter(client.list_tables(results_per_page=1)), None)
    except ServiceRequestError:
        return False
    finally:
        client.close()
    return True


def _error(message: str, code: int) -> int:
    print(f"chatft cleanup: {message}", file=sys.stderr)
    return code
