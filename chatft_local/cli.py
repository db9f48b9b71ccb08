"""`chatft`: the local command line. Each subcommand lives in its own module and is imported only when run."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). Each module defines `add_arguments(parser)` and `main(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "host": ("chatft_local.commands.host", "serve function_app locally on Azurite (foreground; Ctrl-C stops)"),
    "key": ("chatft_local.commands.key", "print the local function key for the HTTP routes"),
    "validate": ("chatft_local.commands.validate", "check a chat JSONL file before uploading it"),
    "convert": ("chatft_local.commands.convert", "turn ShareGPT, Alpaca, prompt/completion, JSON or a dataset into "
                                                 "chat JSONL"),
    "prepare-data": ("chatft_local.commands.prepare_data", "write a dataset's splits as chat JSONL"),
    "upload": ("chatft_local.commands.upload", "upload training JSONL to the watched container"),
    "runs": ("chatft_local.commands.runs", "list runs, or show one run in detail"),
    "lines": ("chatft_local.commands.lines", "list model lines, or one line's deployments and traffic"),
    "rollback": ("chatft_local.commands.rollback", "send a model line's traffic back to its previous version"),
    "cleanup": ("chatft_local.commands.cleanup", "apply the idle-endpoint cleanup policy now"),
    "demo": ("chatft_local.commands.demo", "the whole flow on this machine: upload, train, deploy, score"),
    "notify": ("chatft_local.commands.notify", "send a signed test event to each webhook, or print a new secret"),
    "doctor": ("chatft_local.commands.doctor", "check the local stack or an Azure deployment (read-only)"),
}


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatft", description="Chat fine-tuning on Azure ML, or on this machine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == load:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(load=name if name in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from chatft_local.runtime import use_local_workspace

    use_local_workspace()
    return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
