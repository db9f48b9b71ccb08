"""`chatft key`: print the local host's function key (created on first use), for `x-functions-key` or `?code=`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None, help="local state directory (default: setting CHATFT_STATE_DIR)")


def main(args: argparse.Namespace) -> int:
    from chatft_local.hosting.indexing import read_local_settings
    from chatft_local.hosting.keys import function_key
    from shared.config import Settings

    # The same settings the host reads: the environment first, then local.settings.json.
    env = {**read_local_settings(Path.cwd() / "local.settings.json"), **os.environ}
    state_dir = args.state_dir or Settings.from_env(env).chatft_state_dir
    print(function_key(state_dir))
    return 0
