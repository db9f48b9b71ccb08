"""`chatft notify test`: send a signed test event to each NOTIFY_WEBHOOK_URLS URL and print each answer;
`chatft notify secret`: print a new `whsec_` signing secret for NOTIFY_WEBHOOK_SECRET."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("test", "secret"),
                        help="test: send a signed test event to each webhook; secret: print a new signing secret")


def main(args: argparse.Namespace) -> int:
    from shared.notifications import new_secret, send_test_event

    if args.action == "secret":
        print(new_secret())
        return 0
    from chatft_local.hosting.indexing import read_local_settings
    from shared.config import Settings, SettingError
    from shared.runs import utcnow

    # The same settings the host reads: the environment first, then local.settings.json.
    env = {**read_local_settings(Path.cwd() / "local.settings.json"), **os.environ}
    try:
        answers = send_test_event(Settings.from_env(env), utcnow())
    except SettingError as exc:
        print(f"✘ {exc}")
        return 2
    for a in answers:
        said = f"answered {a.status}" if a.status is not None else f"no answer ({a.error})"
        print(f"{'✔' if a.ok else '✘'} {a.target} {said} in {a.milliseconds} ms")
    return 0 if all(a.ok for a in answers) else 1
