"""The app as the Functions host sees it: bindings, settings documentation, and a light cold start."""

import json
import re
import subprocess
import sys

from shared.config import SETTINGS, Settings, SettingError

from .conftest import PROJECT_ROOT

# pydantic: only settings and the routes that check a request body with the wire models import it.
HEAVY = ("azure.ai.ml", "mlflow", "torch", "transformers", "pandas", "datasets", "tokenizers", "ijson", "pydantic")


def test_importing_function_app_loads_nothing_heavy():
    code = ("import sys, function_app; heavy = %r; "
            "print([m for m in heavy if m in sys.modules or any(k.startswith(m + '.') for k in sys.modules)])"
            % (HEAVY,))
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_bindings_read_names_from_settings():
    out = subprocess.run([sys.executable, "-c", (
        "import json, function_app\n"
        "fs = function_app.app.get_functions()\n"
        "print(json.dumps({f.get_function_name(): [json.loads(b.get_binding_json() if hasattr(b, 'get_binding_json')"
        " else json.dumps(b.get_dict_repr(), default=str)) for b in f.get_bindings()] for f in fs}, default=str))")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    functions = json.loads(out.stdout)
    assert functions["ingest"][0]["path"] == "%TRAINING_CONTAINER%/{name}"
    assert functions["ingest"][0]["source"] == "EventGrid"
    assert functions["submit"][0]["queueName"] == "%RUNS_QUEUE%"
    assert functions["deployments"][0]["queueName"] == "%DEPLOY_QUEUE%"
    assert functions["job_events"][0]["type"] == "eventGridTrigger"
    for name, bindings in functions.items():
        for b in bindings:
            if b["type"] == "httpTrigger" and name != "health":
                assert "function" in str(b.get("authLevel", "function")).lower(), name


def _readme_settings_table() -> dict[str, tuple[str, str]]:
    rows = {}
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Settings\n"):]
    section = section[:section.find("\n## ", 1)]
    for line in section.splitlines():
        found = re.match(r"^\| `([^`]+)` \| `([^`]*)` \| (.*) \|$", line)
        if found:
            rows[found.group(1)] = (found.group(2), found.group(3))
    return rows


def _shown(default) -> str:
    return "(empty)" if default == "" else str(default).lower() if isinstance(default, bool) else str(default)


def test_every_setting_is_documented_in_readme_and_example():
    """The README's settings table and `local.settings.json.example` say what the declarations in
    `shared/config.py` say: the same names, defaults and descriptions."""
    example = json.loads((PROJECT_ROOT / "local.settings.json.example").read_text())["Values"]
    table = _readme_settings_table()
    for name, setting in SETTINGS.items():
        assert name in example, f"{name} missing from local.settings.json.example"
        assert name in table, f"{name} missing from the README's settings table"
        assert table[name] == (_shown(setting.default), setting.doc), f"README row of {name} disagrees with config"
    assert set(table) == set(SETTINGS), "the README lists settings the app does not have"
    assert Settings.from_env(example)  # the example's values are valid as they stand


def test_host_json_dequeue_count_matches_the_delivery_setting():
    host = json.loads((PROJECT_ROOT / "host.json").read_text())
    assert host["extensions"]["queues"]["maxDequeueCount"] == SETTINGS["MAX_DELIVERY_COUNT"].default


def test_malformed_settings_are_named():
    for env, fragment in [({"DEPLOY_TIMEOUT_MINUTES": "soon"}, "DEPLOY_TIMEOUT_MINUTES must be an integer"),
                          ({"ML_BACKEND": "sagemaker"}, "ML_BACKEND must be one of azureml, local"),
                          ({"TEST_FRACTION": "1.5"}, "TEST_FRACTION"),
                          ({"CLEANUP_DRY_RUN": "maybe"}, "CLEANUP_DRY_RUN must be true or false"),
                          ({"ML_BACKEND": "azureml"}, "AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AML_WORKSPACE"),
                          ({"MESSAGING": "servicebus"}, "ServiceBusConnection__fullyQualifiedNamespace")]:
        try:
            Settings.from_env(env)
        except SettingError as exc:
            assert fragment in str(exc)
        else:
            raise AssertionError(f"{env} was accepted")



def test_identity_based_storage_reaches_the_named_account_without_a_connection_string():
    from shared.storage import StorageAccount

    account = StorageAccount.of(Settings.from_env({"AzureWebJobsStorage__accountName": "chatftprod"}))
    assert account.blob_service().url.startswith("https://chatftprod.blob.core.windows.net")
    assert account.table("runs").url.startswith("https://chatftprod.table.core.windows.net")
    assert account.queue("runs").url.startswith("https://chatftprod.queue.core.windows.net/runs")
    local = StorageAccount.of(Settings.from_env({}))
    assert local.table("runs").url.startswith("http://127.0.0.1:10002/devstoreaccount1")


def test_the_app_does_not_import_the_local_runtime_and_says_who_serves_ml_backend_local():
    """`shared` never imports `chatft_local`: without the local runtime, ML_BACKEND=local is a clear SettingError."""
    code = ("import sys\n"
            "from shared.bootstrap import make_ml_backend\n"
            "from shared.config import Settings, SettingError\n"
            "try:\n"
            "    make_ml_backend(Settings.from_env({}))\n"
            "except SettingError as exc:\n"
            "    print(exc)\n"
            "print(sorted(m for m in sys.modules if m.startswith('chatft_local')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    said, loaded = out.stdout.strip().splitlines()
    assert "ML_BACKEND=local" in said and "chatft host" in said
    assert loaded == "[]"
