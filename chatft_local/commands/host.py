"""`chatft host`: serve the function app on this machine against Azurite, in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", default="function_app", help="function app module (default: function_app)")
    parser.add_argument("--port", type=int, default=None,
                        help="port on 127.0.0.1 (default: setting CHATFT_HOST_PORT; 0 picks a free one)")
    parser.add_argument("--state-dir", default=None, help="local state directory (default: setting CHATFT_STATE_DIR)")
    parser.add_argument("--blob-scan-seconds", type=float, default=1.0,
                        help="how often blob-triggered containers are scanned (default: 1)")
    parser.add_argument("--no-services", action="store_true",
                        help="do not start chatft_local.services (the local ML workspace)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def main(args: argparse.Namespace) -> int:
    from chatft_local.host import LocalHost
    from shared.config import SettingError

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every storage request at INFO

    def ready(host: LocalHost) -> None:
        print(f"chatft host ready: {host.base_url} ({len(host.functions)} functions; "
              "`chatft key` prints the function key)", flush=True)

    host = LocalHost(args.app, state_dir=args.state_dir, port=args.port, services=not args.no_services,
                     blob_scan_seconds=args.blob_scan_seconds)
    try:
        host.run(on_ready=ready)
    except (RuntimeError, SettingError, OSError) as e:  # RuntimeError: IndexingError, Azurite failing to start
        print(f"chatft host: {e}", file=sys.stderr)
        return 1
    return 0
