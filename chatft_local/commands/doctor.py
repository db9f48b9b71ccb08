"""`chatft doctor`: check a configuration, read-only. One line per check (✔/✘, and the fix); exit 0 only when all
pass. Locally: Azurite, the host, the key, the local ML workspace. Against Azure (`--azure`, or when the workspace
settings are set): the deployment `azd up` made, found through azd's environment values."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="only the local checks")
    where.add_argument("--azure", action="store_true", help="only the Azure checks (reads `azd env get-values`)")


def azd_values() -> dict[str, str]:
    """The current azd environment's values (infra outputs), or {} without azd."""
    exe = shutil.which("azd")
    if exe is None:
        return {}
    done = subprocess.run([exe, "env", "get-values"], capture_output=True, text=True, timeout=60)
    values = {}
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values


def main(args: argparse.Namespace) -> int:
    from chatft_local.doctor import Report, azure_checks, local_checks, render
    from chatft_local.hosting.indexing import read_local_settings
    from shared.config import Settings, SettingError

    env = {**read_local_settings(Path.cwd() / "local.settings.json"), **os.environ}
    report = Report()
    want_azure = args.azure or (not args.local and any(env.get(n) for n in ("AML_WORKSPACE",
                                                                            "AZURE_FUNCTION_APP_NAME")))
    if not args.azure:
        try:
            settings = Settings.from_env(env)
        except SettingError as exc:
            report.add("local settings valid", False, str(exc), "fix local.settings.json or the environment")
        else:
            local_checks(settings, report)
    if want_azure:
        from chatft_local.azure_cloud import AzureCloud, Deployment

        deployment = Deployment.from_env({**azd_values(), **env})
        if deployment is None:
            report.add("Azure deployment found", False, "RESOURCE_GROUP and AZURE_FUNCTION_APP_NAME are not set",
                       "run `azd up` in this folder (azd keeps them), or export both")
        else:
            azure_checks(AzureCloud(deployment), report,
                         gpu_vm_size={**azd_values(), **env}.get("GPU_VM_SIZE", ""))
    for line in render(report):
        print(line)
    return 0 if report.ok else 1
