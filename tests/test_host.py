"""The local Functions host against real Azurite and real HTTP on 127.0.0.1, serving tests/host_app: each trigger
kind, auth, blob receipts across restarts (in process and as a child process), dead-lettering, scheduled
delivery, timers. The app records each invocation as a file; tests wait for those records."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
import types
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from chatft_local.host import HostProcess, IndexingError, LocalHost
from chatft_local.hosting.blobs import MAX_ATTEMPTS, POISON_QUEUE, RECEIPTS_CONTAINER
from chatft_local.hosting.http import aiohttp_paths, build_http_app
from chatft_local.hosting.indexing import FunctionSpec, HostOptions, binding_lookup, resolve
from shared.messaging import StorageQueueSender
from tests.fakes import RawMessage

APP = "tests.host_app.function_app"
NEVER = "0 0 0 1 1 *"  # once a year: the `tick` timer stays quiet unless a test sets HOSTAPP_TICK
WAIT = 30.0


# -- helpers ---------------------------------------------------------------------------------------------------

def records(env: dict, function: str) -> list[dict]:
    folder = Path(env["HOSTAPP_RECORDS"]) / function
    found = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(found, key=lambda r: r["at"])


def wait_for(check, what: str, timeout: float = WAIT):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def upload(connection: str, container: str, name: str, data: bytes) -> str:
    client = BlobServiceClient.from_connection_string(connection).get_container_client(container)
    if not client.exists():
        client.create_container()
    return client.get_blob_client(name).upload_blob(data, overwrite=True)["etag"].strip('"')


@pytest.fixture
def app_env(azurite, unique, tmp_path):
    return {
        "AzureWebJobsStorage": azurite,
        "HOSTAPP_RECORDS": str(tmp_path / "records"),
        "HOSTAPP_CONTAINER": f"{unique}-up",
        "HOSTAPP_STREAM_CONTAINER": f"{unique}-stream",
        "HOSTAPP_QUEUE": f"{unique}-q",
        "HOSTAPP_TICK": NEVER,
    }


@pytest.fixture
def start_host(app_env, tmp_path):
    """Start an in-process LocalHost on a free port with fast blob scans; all stopped at the end. Its host.json
    retries at once and dead-letters after 3 deliveries."""
    hosts: list[LocalHost] = []

    def start(env: dict | None = None, **options) -> LocalHost:
        options = {"blob_scan_seconds": 0.2, **options}
        host = LocalHost(APP, state_dir=tmp_path / "state", port=0, env={**app_env, **(env or {})},
                         services=False, **options)
        hosts.append(host)
        return host.start()

    yield start
    for host in hosts:
        host.stop()


@pytest.fixture
def host(start_host):
    return start_host()


# -- HTTP ------------------------------------------------------------------------------------------------------

def test_function_routes_need_the_key_in_header_or_code(host):
    url = host.base_url + "/api/items/42?q=x"
    for headers in ({}, {"x-functions-key": "wrong"}):
        r = requests.get(url, headers=headers)
        assert r.status_code == 401
        assert "function key" in r.json()["error"]["message"]
    assert requests.get(url + "&code=wrong").status_code == 401

    by_header = requests.get(url, headers={"x-functions-key": host.function_key})
    by_code = requests.get(url + "&code=" + host.function_key)
    for r in (by_header, by_code):
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/json"
    assert by_header.json() == {"id": "42", "q": "x", "function": "get_item"}  # route param, query, context
    assert by_code.json()["id"] == "42"


def test_anonymous_routes_and_optional_route_parameters(host):
    assert requests.get(host.base_url + "/api/health").json() == {"status": "ok"}
    assert requests.get(host.base_url + "/api/models").text == "default"
    r = requests.get(host.base_url + "/api/models/phi-4")
    assert (r.status_code, r.text, r.headers["Content-Type"]) == (200, "phi-4", "text/plain; charset=utf-8")


def test_async_function_gets_the_body_and_sets_status_and_headers(host):
    body = bytes(range(256)) * 4
    r = requests.post(host.base_url + "/api/echo", data=body, headers={"x-functions-key": host.function_key})
    assert r.status_code == 201
    assert r.content == body
    assert r.headers["X-Echo-Length"] == str(len(body))
    assert r.headers["Content-Type"] == "application/octet-stream"


def test_body_over_max_request_bytes_is_413(start_host):
    host = start_host(env={"MAX_REQUEST_BYTES": "1000"})
    headers = {"x-functions-key": host.function_key}
    r = requests.post(host.base_url + "/api/echo", data=b"x" * 1001, headers=headers)
    assert r.status_code == 413
    assert "1000 bytes" in r.json()["error"]["message"]
    assert requests.post(host.base_url + "/api/echo", data=b"x" * 1000, headers=headers).status_code == 201


def test_unknown_routes_wrong_methods_and_failing_functions(host):
    assert requests.get(host.base_url + "/api/nothing-here").status_code == 404
    assert requests.get(host.base_url + "/api/echo", headers={"x-functions-key": host.function_key}).status_code == 405
    r = requests.post(host.base_url + "/api/boom")
    assert r.status_code == 500
    assert "boom" not in r.text  # the failure is in the log, not the response
    assert requests.get(host.base_url + "/api/health").status_code == 200  # and the host keeps serving


# -- Event Grid ------------------------------------------------------------------------------------------------

def _grid_event(event_id: str, data: dict, event_type: str = "Microsoft.MachineLearningServices.RunStatusChanged"):
    return {"id": event_id, "topic": "/subscriptions/x/workspaces/w", "subject": f"experiments/e/runs/{event_id}",
            "eventType": event_type, "eventTime": "2024-05-01T10:00:00.1234567Z", "data": data,
            "dataVersion": "2", "metadataVersion": "1"}


def test_event_grid_handshake_and_delivery(host, app_env):
    url = host.base_url + "/runtime/webhooks/eventgrid"
    params = {"functionName": "on_event", "code": host.function_key}
    handshake = _grid_event("v1", {"validationCode": "512d38b6"}, "Microsoft.EventGrid.SubscriptionValidationEvent")
    r = requests.post(url, params=params, json=[handshake], headers={"aeg-event-type": "SubscriptionValidation"})
    assert r.status_code == 200 and r.json() == {"validationResponse": "512d38b6"}
    assert records(app_env, "on_event") == []

    events = [_grid_event("e1", {"runId": "r1", "runStatus": "Completed"}), _grid_event("e2", {"runId": "r2"})]
    r = requests.post(url, params=params, json=events, headers={"aeg-event-type": "Notification"})
    assert r.status_code == 202
    got = records(app_env, "on_event")
    assert [g["id"] for g in got] == ["e1", "e2"]
    assert got[0]["type"] == "Microsoft.MachineLearningServices.RunStatusChanged"
    assert got[0]["subject"] == "experiments/e/runs/e1"
    assert got[0]["data"] == {"runId": "r1", "runStatus": "Completed"}
    assert got[0]["time"].startswith("2024-05-01T10:00:00.123456")


def test_event_grid_webhook_refusals(host):
    url = host.base_url + "/runtime/webhooks/eventgrid"
    event = [_grid_event("e1", {})]
    assert requests.post(url, params={"functionName": "on_event"}, json=event).status_code == 401
    assert requests.post(url, params={"functionName": "on_event", "code": "nope"}, json=event).status_code == 401
    key = host.function_key
    assert requests.post(url, params={"functionName": "nope", "code": key}, json=event).status_code == 404
    assert requests.post(url, params={"functionName": "get_item", "code": key}, json=event).status_code == 404
    assert requests.post(url, params={"functionName": "on_event", "code": key}, data=b"{").status_code == 400
    assert requests.post(url, params={"functionName": "on_event", "code": key}, json=[{"id": "x"}]).status_code == 400
    # A failing function answers 500 so that Event Grid delivers again.
    r = requests.post(url, params={"functionName": "on_event"}, headers={"x-functions-key": key},
                      json=[_grid_event("e3", {"fail": True})])
    assert r.status_code == 500


# -- blob triggers ---------------------------------------------------------------------------------------------

def _receipt(connection: str, function: str, container: str, name: str) -> str | None:
    blob = BlobServiceClient.from_connection_string(connection).get_blob_client(
        RECEIPTS_CONTAINER, f"blobreceipts/chatft-local/{function}/{container}/{name}")
    try:
        return blob.download_blob().readall().decode()
    except ResourceNotFoundError:
        return None


def test_blob_is_processed_once_across_a_restart_and_again_when_overwritten(start_host, app_env, azurite):
    container = app_env["HOSTAPP_CONTAINER"]
    first = start_host()
    etag = upload(azurite, container, "a-upload.jsonl", b"one")
    got = wait_for(lambda: records(app_env, "on_upload"), "the upload to be processed")
    assert got[0]["name"] == "a-upload.jsonl" and got[0]["container"] == container
    wait_for(lambda: _receipt(azurite, "on_upload", container, "a-upload.jsonl") == etag, "the blob receipt")
    first.stop()

    start_host()  # the same app module again: indexed once, served again
    upload(azurite, container, "z-marker.jsonl", b"marker")
    # Listing is in name order, so once the marker ran the earlier blob was seen by the restarted host too.
    wait_for(lambda: any(r["name"] == "z-marker.jsonl" for r in records(app_env, "on_upload")), "the marker")
    assert [r["name"] for r in records(app_env, "on_upload")].count("a-upload.jsonl") == 1

    new_etag = upload(azurite, container, "a-upload.jsonl", b"two")
    wait_for(lambda: [r["content"] for r in records(app_env, "on_upload")].count("two") == 1, "the overwrite")
    wait_for(lambda: _receipt(azurite, "on_upload", container, "a-upload.jsonl") == new_etag, "the new receipt")


def test_blob_is_processed_once_across_a_killed_host_process(app_env, azurite, tmp_path):
    container = app_env["HOSTAPP_CONTAINER"]
    args = ["--no-services", "--blob-scan-seconds", "0.2"]
    first = HostProcess(APP, state_dir=tmp_path / "state", env=app_env, args=args).start()
    try:
        upload(azurite, container, "a-upload.jsonl", b"one")
        wait_for(lambda: records(app_env, "on_upload"), "the upload to be processed")
        wait_for(lambda: _receipt(azurite, "on_upload", container, "a-upload.jsonl"), "the blob receipt")
    finally:
        first.kill()
    second = HostProcess(APP, state_dir=tmp_path / "state", env=app_env, args=args).start()
    try:
        assert requests.get(second.base_url + "/api/health").status_code == 200
        assert second.function_key == first.function_key
        upload(azurite, container, "z-marker.jsonl", b"marker")
        wait_for(lambda: any(r["name"] == "z-marker.jsonl" for r in records(app_env, "on_upload")), "the marker")
        assert [r["name"] for r in records(app_env, "on_upload")].count("a-upload.jsonl") == 1
    finally:
        assert second.stop() == 0, "\n".join(second.output)  # SIGTERM is a clean stop
    assert any("Executed on_upload (" in line and "Succeeded" in line for line in second.output)


def test_failing_blob_is_tried_five_times_then_poisoned_and_receipted(host, app_env, azurite):
    container = app_env["HOSTAPP_CONTAINER"]
    etag = upload(azurite, container, "a-bad.jsonl", b"fail please")
    wait_for(lambda: _receipt(azurite, "on_upload", container, "a-bad.jsonl") == etag, "the receipt after retries")
    assert len(records(app_env, "on_upload")) == MAX_ATTEMPTS
    upload(azurite, container, "z-marker.jsonl", b"marker")
    wait_for(lambda: len(records(app_env, "on_upload")) == MAX_ATTEMPTS + 1, "the marker")
    assert [r["name"] for r in records(app_env, "on_upload")].count("a-bad.jsonl") == MAX_ATTEMPTS

    poison = QueueClient.from_connection_string(azurite, POISON_QUEUE)  # shared by every test: take ours only
    mine = [m for m in poison.receive_messages(visibility_timeout=10)
            if json.loads(m.content)["ContainerName"] == container]
    assert len(mine) == 1
    assert {"BlobName": "a-bad.jsonl", "ETag": etag}.items() <= json.loads(mine[0].content).items()
    poison.delete_message(mine[0])


def test_input_stream_binding_and_path_pattern(host, app_env, azurite):
    container = app_env["HOSTAPP_STREAM_CONTAINER"]
    upload(azurite, container, "a-outside.txt", b"not under in/")
    upload(azurite, container, "in/data.txt", b"hello")
    got = wait_for(lambda: records(app_env, "on_stream"), "the stream blob")
    assert got == [{"at": got[0]["at"], "name": f"{container}/in/data.txt", "length": 5, "content": "hello"}]
    upload(azurite, container, "in/z-marker.txt", b"m")
    wait_for(lambda: len(records(app_env, "on_stream")) == 2, "the marker")
    assert all("outside" not in r["name"] for r in records(app_env, "on_stream"))


# -- Service Bus triggers on storage queues --------------------------------------------------------------------

def test_message_arrives_as_a_service_bus_message(host, app_env, azurite):
    StorageQueueSender(azurite).send(app_env["HOSTAPP_QUEUE"], RawMessage({"n": 1}, "run-1"))
    got = wait_for(lambda: records(app_env, "on_message"), "the message")
    assert (got[0]["message_id"], got[0]["delivery_count"], got[0]["body"]) == ("run-1", 1, {"n": 1})
    assert got[0]["enqueued"] is not None
    queue = QueueClient.from_connection_string(azurite, app_env["HOSTAPP_QUEUE"])
    wait_for(lambda: queue.get_queue_properties().approximate_message_count == 0, "the message to be deleted")


def test_message_is_dead_lettered_after_max_dequeue_count(host, app_env, azurite):
    queue = app_env["HOSTAPP_QUEUE"]
    StorageQueueSender(azurite).send(queue, RawMessage({"fail": True}, "run-bad"))
    # The dead-lettered message goes to `<queue>-deadletter`, and from there to the trigger on
    # `<queue>/$deadletterqueue` with the reason Service Bus gives.
    moved = wait_for(lambda: records(app_env, "on_dead_letter"), "the dead-lettered message")
    assert [(m["message_id"], m["body"]) for m in moved] == [("run-bad", {"fail": True})]
    assert moved[0]["reason"] == "MaxDeliveryCountExceeded" and moved[0]["description"]
    assert moved[0]["source"] == queue and moved[0]["delivery_count"] == 3
    # tests/host_app/host.json sets maxDequeueCount 3: three deliveries, counted 1, 2, 3.
    assert [r["delivery_count"] for r in records(app_env, "on_message")] == [1, 2, 3]
    deadletter = QueueClient.from_connection_string(azurite, queue + "-deadletter")
    wait_for(lambda: deadletter.get_queue_properties().approximate_message_count == 0, "the dead letter handled")
    assert QueueClient.from_connection_string(azurite, queue).get_queue_properties().approximate_message_count == 0


def test_a_second_message_with_the_same_message_id_is_dropped_as_service_bus_duplicate_detection_does(
        host, app_env, azurite):
    sender, queue = StorageQueueSender(azurite), app_env["HOSTAPP_QUEUE"]
    sender.send(queue, RawMessage({"copy": 1}, "same"))
    wait_for(lambda: records(app_env, "on_message"), "the first copy")
    sender.send(queue, RawMessage({"copy": 2}, "same"))
    sender.send(queue, RawMessage({"copy": 3}, "other"))
    wait_for(lambda: len(records(app_env, "on_message")) == 2, "the other message")
    client = QueueClient.from_connection_string(azurite, queue)
    wait_for(lambda: client.get_queue_properties().approximate_message_count == 0, "the duplicate to be removed")
    assert sorted(r["body"]["copy"] for r in records(app_env, "on_message")) == [1, 3]


def test_scheduled_message_is_not_delivered_early(host, app_env, azurite):
    sender, queue = StorageQueueSender(azurite), app_env["HOSTAPP_QUEUE"]
    sent = time.time()
    sender.send(queue, RawMessage({"which": "later"}, "later"), delay_seconds=3)
    sender.send(queue, RawMessage({"which": "now"}, "now"))
    wait_for(lambda: records(app_env, "on_message"), "the unscheduled message")
    assert [r["message_id"] for r in records(app_env, "on_message")] == ["now"]
    wait_for(lambda: len(records(app_env, "on_message")) == 2, "the scheduled message")
    later = records(app_env, "on_message")[1]
    assert later["message_id"] == "later"
    assert later["at"] >= sent + 3 - 0.05  # Azurite keeps time to the millisecond; allow clock rounding


def test_long_run_keeps_its_lock_and_runs_once(start_host, app_env, azurite):
    start_host(lock_seconds=2)
    sender, queue = StorageQueueSender(azurite), app_env["HOSTAPP_QUEUE"]
    sender.send(queue, RawMessage({"sleep": 4}, "slow"))
    wait_for(lambda: records(app_env, "on_message"), "the slow message to start")
    queue_client = QueueClient.from_connection_string(azurite, queue)
    visible, deadline = [], time.monotonic() + WAIT  # a lock that runs out shows the message while it runs
    while queue_client.get_queue_properties().approximate_message_count:
        assert time.monotonic() < deadline, "the slow message never ended"
        visible += queue_client.peek_messages()
        time.sleep(0.02)
    assert visible == []
    sender.send(queue, RawMessage({}, "marker"))
    wait_for(lambda: len(records(app_env, "on_message")) == 2, "the marker")
    assert [r["message_id"] for r in records(app_env, "on_message")] == ["slow", "marker"]


def test_messages_run_concurrently(host, app_env, azurite):
    sender = StorageQueueSender(azurite)
    for i in range(3):
        sender.send(app_env["HOSTAPP_QUEUE"], RawMessage({"sleep": 1}, f"m{i}"))
    got = wait_for(lambda: len(records(app_env, "on_message")) == 3 and records(app_env, "on_message"), "3 runs")
    assert max(r["at"] for r in got) < min(r["at"] for r in got) + 1  # all started before the first one ended


# -- timers ----------------------------------------------------------------------------------------------------

def test_timer_fires_on_its_schedule(start_host, app_env):
    start_host(env={"HOSTAPP_TICK": "* * * * * *"})
    ticks = wait_for(lambda: len(records(app_env, "tick")) >= 3 and records(app_env, "tick"), "three ticks")
    assert all(t["past_due"] is False for t in ticks)
    assert len({int(t["at"]) for t in ticks}) == len(ticks)  # one run per second


def test_run_on_startup(start_host, app_env):
    first = start_host()
    assert len(wait_for(lambda: records(app_env, "on_startup"), "the startup run")) == 1
    assert records(app_env, "tick") == []  # its schedule has not come
    first.stop()
    start_host()
    wait_for(lambda: len(records(app_env, "on_startup")) == 2, "the startup run of the second host")


# -- logging and the services hook ----------------------------------------------------------------------------

def test_stopping_awaits_the_apps_shutdown_hooks_on_the_hosts_loop(start_host):
    import asyncio

    from shared.lifecycle import on_shutdown

    host = start_host()
    seen = []

    async def hook():  # as the scoring proxy registers closing its pooled session
        seen.append(asyncio.get_running_loop())

    on_shutdown(hook)
    loop = host._loop
    host.stop()
    assert seen == [loop]


def test_each_invocation_is_logged_in_one_line_without_keys_or_payloads(host, app_env, azurite, caplog):
    caplog.set_level(logging.INFO, logger="chatft.host")
    assert requests.get(f"{host.base_url}/api/items/7?code={host.function_key}").status_code == 200
    StorageQueueSender(azurite).send(app_env["HOSTAPP_QUEUE"], RawMessage({"secret": "s3cr3t-body"}, "run-log"))
    wait_for(lambda: records(app_env, "on_message"), "the message")
    wait_for(lambda: any("run-log" in r.getMessage() for r in caplog.records), "the message's log line")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Executed")]
    assert any(line.startswith("Executed get_item (GET /api/items/7) in ") and line.endswith("ms: Succeeded")
               for line in lines)
    assert any(line.startswith("Executed on_message (run-log) in ") for line in lines)
    assert host.function_key not in caplog.text and "s3cr3t-body" not in caplog.text


def test_services_start_after_storage_and_before_serving_and_stop_at_shutdown(app_env, tmp_path, monkeypatch):
    calls = []

    def start(settings, host):
        calls.append(("start", settings.chatft_state_dir, host.function_key, host.base_url))
        # Not serving yet: the port is bound (so the URL is known) but refuses connections until start() returns.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(host.base_url + "/api/health", timeout=0.3)

    services = types.ModuleType("chatft_local.services")
    services.start = start
    services.stop = lambda: calls.append(("stop",))
    monkeypatch.setitem(sys.modules, "chatft_local.services", services)
    env = {**app_env, "CHATFT_STATE_DIR": str(tmp_path / "state")}
    host = LocalHost(APP, port=0, env=env, services=True).start()
    try:
        assert calls == [("start", str(tmp_path / "state"), host.function_key, host.base_url)]
        assert host.state_dir == tmp_path / "state"
    finally:
        host.stop()
    assert calls[-1] == ("stop",)


# -- settings, bindings, keys ----------------------------------------------------------------------------------

def test_function_key_is_owner_only_stable_and_printed_by_chatft_key(start_host, tmp_path, capsys):
    from chatft_local.cli import main

    first = start_host()
    key_file = tmp_path / "state" / "function.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first.stop()
    assert start_host().function_key == first.function_key
    assert main(["key", "--state-dir", str(tmp_path / "state")]) == 0
    assert capsys.readouterr().out.strip() == first.function_key


def test_local_settings_fill_unset_values_and_are_removed_at_stop(start_host, app_env, azurite, tmp_path):
    env = dict(app_env)
    stream_container = env.pop("HOSTAPP_STREAM_CONTAINER")
    assert "HOSTAPP_STREAM_CONTAINER" not in os.environ
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": {
        "HOSTAPP_STREAM_CONTAINER": stream_container,
        "HOSTAPP_CONTAINER": "not-this-one",  # the host's env wins over the file
    }}))
    host = LocalHost(APP, state_dir=tmp_path / "state", port=0, env=env, settings_file=settings_file,
                     services=False, blob_scan_seconds=0.2).start()
    try:
        upload(azurite, stream_container, "in/x.txt", b"x")
        upload(azurite, app_env["HOSTAPP_CONTAINER"], "y.txt", b"y")
        wait_for(lambda: records(app_env, "on_stream") and records(app_env, "on_upload"), "both blobs")
    finally:
        host.stop()
    assert "HOSTAPP_STREAM_CONTAINER" not in os.environ and "HOSTAPP_QUEUE" not in os.environ


def test_a_binding_expression_without_a_value_stops_start_up(app_env, tmp_path):
    env = dict(app_env)
    del env["HOSTAPP_QUEUE"]
    host = LocalHost(APP, state_dir=tmp_path / "state", port=0, env=env, services=False)
    with pytest.raises(IndexingError, match="on_message.*%HOSTAPP_QUEUE%"):
        host.start()
    assert "HOSTAPP_CONTAINER" not in os.environ  # the environment is restored after a failed start


def test_binding_expressions_fall_back_to_setting_defaults():
    lookup = binding_lookup({"RUNS_QUEUE": "mine"})
    assert resolve("%RUNS_QUEUE%", lookup, "f") == "mine"
    assert resolve("%TRAINING_CONTAINER%/{name}", lookup, "f") == "training-data/{name}"
    with pytest.raises(IndexingError, match="NOT_A_SETTING"):
        resolve("%NOT_A_SETTING%", lookup, "f")


def test_host_json_options():
    project = json.loads((Path(__file__).parent.parent / "host.json").read_text())
    options = HostOptions.from_host_json(project)
    assert options.route_prefix == "api"
    assert options.max_dequeue_count == project["extensions"]["queues"].get("maxDequeueCount", 10)
    assert HostOptions.from_host_json({}) == HostOptions()
    parsed = HostOptions.from_host_json({"extensions": {"http": {"routePrefix": ""}, "queues": {
        "maxDequeueCount": 3, "visibilityTimeout": "1.00:02:05"}, "serviceBus": {"maxConcurrentCalls": 2}}})
    assert parsed == HostOptions(route_prefix="", max_dequeue_count=3, retry_seconds=86525, max_concurrent_calls=2)
    with pytest.raises(IndexingError, match="TimeSpan"):
        HostOptions.from_host_json({"extensions": {"queues": {"visibilityTimeout": "5s"}}})


@pytest.mark.parametrize("route, paths", [
    ("health", ["/api/health"]),
    ("", ["/api"]),
    ("runs/{id}", ["/api/runs/{id}"]),
    ("score/{model?}", ["/api/score", "/api/score/{model}"]),
    ("items/{n:int}", [r"/api/items/{n:-?\d+}"]),
    ("files/{*rest}", ["/api/files", "/api/files/{rest:.*}"]),
])
def test_route_templates(route, paths):
    assert aiohttp_paths("api", route) == paths


def test_conflicting_or_unsupported_routes_are_indexing_errors():
    def spec(name, route, methods=None):
        return FunctionSpec(name, lambda req: None, {"type": "httpTrigger", "route": route, "methods": methods},
                            "req", None, False)

    with pytest.raises(IndexingError, match="function b: .*GET is already registered"):
        build_http_app([spec("a", "x", ["GET"]), spec("b", "x", ["GET", "POST"])], None, "key", "api", 10)
    with pytest.raises(IndexingError, match="function c: .*not supported"):
        build_http_app([spec("c", "x/{a}{b}")], None, "key", "api", 10)
    build_http_app([spec("a", "x", ["GET"]), spec("b", "x", ["POST"])], None, "key", "api", 10)  # methods split
