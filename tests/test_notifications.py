"""Run events and their deliveries, below the host: the CloudEvents the run store makes in its compare-and-swap, the
outbox flush, Standard Webhooks signatures (the spec's test vector), deliveries to real receivers on 127.0.0.1 (2xx,
retries with backoff, 410, a receiver that never answers), and the Event Grid publisher's request, captured at the
cloud boundary."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.bootstrap import bootstrap
from shared.config import SettingError, local_only_problems
from shared.events import EVENT_TYPES, RunEvent
from shared.messages import DeliverEvent
from shared.notifications import (EVENTGRID, DeliveryAbandoned, EventGridPublisher, deliver_event, destination_key,
                                  flush_pending, gone_mark, new_secret, signed_headers)
from shared.run_store import InMemoryRunStore
from shared.runs import State, new_run
from tests.fakes import FakeMLBackend, RecordingSender
from tests.webhook_receiver import WebhookReceiver

# The Standard Webhooks specification's test vector (standard-webhooks/standard-webhooks, spec and libraries' tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
SECRET = new_secret()
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def _svc(settings, urls: str = "https://hooks.example.com/a", **changes):
    settings = settings.replace(notify_webhook_urls=urls, notify_webhook_secret=SECRET, **changes)
    return bootstrap(settings, ml=FakeMLBackend(), messages=RecordingSender(), runs=InMemoryRunStore(),
                     clock=Clock())


def _queued(svc, run_id="data-0123456789ab"):
    svc.runs.create(new_run(run_id, svc.clock(), upload={"blob": "data.jsonl"}))
    svc.runs.update(run_id, lambda r: r.advance(State.VALIDATING, svc.clock()))
    return svc.runs.update(run_id, lambda r: r.advance(State.QUEUED, svc.clock(), "9 train / 1 test records",
                                                       report={"records": 10, "valid_records": 10}))


# --- signatures and settings ---------------------------------------------------------------------------------------

def test_the_signature_reproduces_the_standard_webhooks_test_vector():
    headers = signed_headers(VECTOR_SECRET, VECTOR_ID, VECTOR_BODY,
                             datetime.fromtimestamp(VECTOR_TIMESTAMP, timezone.utc))
    assert headers["webhook-signature"] == VECTOR_SIGNATURE
    assert headers["webhook-id"] == VECTOR_ID and headers["webhook-timestamp"] == str(VECTOR_TIMESTAMP)


def test_a_delivery_verifies_with_the_library_and_fails_with_a_wrong_secret():
    body = b'{"type":"chatft.run.deployed"}'
    headers = signed_headers(SECRET, "r-1.7", body, datetime.now(timezone.utc))
    assert Webhook(SECRET).verify(body, headers) == {"type": "chatft.run.deployed"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # a body changed on the way
        Webhook(SECRET).verify(body.replace(b"deployed", b"failed"), headers)


@pytest.mark.parametrize("secret, says", [("hunter2-hunter2-hunter2-hunter2", "must start with whsec_"),
                                          ("whsec_not*base64!", "followed by base64"),
                                          ("whsec_c2hvcnQ=", "24 to 64 bytes")])
def test_a_malformed_secret_is_refused_without_showing_it(offline_settings, secret, says):
    with pytest.raises(SettingError) as err:
        offline_settings.replace(notify_webhook_urls="https://hooks.example.com/a", notify_webhook_secret=secret)
    assert says in str(err.value) and secret not in str(err.value)


def test_webhook_urls_are_https_or_local_http_and_need_a_secret(offline_settings):
    with pytest.raises(SettingError, match="URL 1 .*must be https"):
        offline_settings.replace(notify_webhook_urls="http://hooks.example.com/x?token=abc",
                                 notify_webhook_secret=SECRET)
    with pytest.raises(SettingError, match="NOTIFY_WEBHOOK_SECRET is required"):
        offline_settings.replace(notify_webhook_urls="https://hooks.example.com/a")
    local = offline_settings.replace(notify_webhook_urls="http://127.0.0.1:9/hook", notify_webhook_secret=SECRET)
    assert ("NOTIFY_WEBHOOK_URLS" in dict(local_only_problems(local, {})))  # fine locally, not in Azure
    # An unresolved Key Vault reference does not stop the app (deliveries fail and retry instead).
    offline_settings.replace(notify_webhook_urls="https://hooks.example.com/a",
                             notify_webhook_secret="@Microsoft.KeyVault(VaultName=kv;SecretName=s)")


# --- events made in the compare-and-swap -------------------------------------------------------------------------

def test_a_terminal_move_writes_one_cloudevent_and_queues_one_delivery_per_destination(offline_settings):
    svc = _svc(offline_settings, urls="https://hooks.example.com/a,https://hooks.example.com/b",
               eventgrid_topic_endpoint="https://t.eastus2-1.eventgrid.azure.net/api/events")
    _queued(svc)
    run = svc.runs.update("data-0123456789ab", lambda r: r.fail("submit", "base model archived", svc.clock()))
    sent = [m for q, m, _, _ in svc.messages.sent if q == offline_settings.notify_queue]
    assert {m.destination for m in sent} == {destination_key("https://hooks.example.com/a"),
                                             destination_key("https://hooks.example.com/b"), EVENTGRID}
    event = sent[0].event
    RunEvent.model_validate(event)  # the declared contract
    assert event["specversion"] == "1.0" and event["type"] == "chatft.run.failed"
    assert event["source"] == "/apps/chatft" and event["subject"] == "runs/data-0123456789ab"
    assert event["id"] == f"data-0123456789ab.{len(run.history) - 1}" and event["time"] == run.history[-1].at
    assert event["data"]["reason"] == "base model archived" and event["data"]["stage"] == "submit"
    assert event["data"]["previous_state"] == "Queued" and event["data"]["links"]["run"] == "/api/runs/data-0123456789ab"
    assert event["data"]["validation"]["records"] == 10
    assert svc.runs.get("data-0123456789ab").outbox == []  # handed on
    assert all("hooks.example.com" not in m.to_json() for m in sent)  # URLs stay in settings


def test_moves_that_are_not_terminal_and_retry_notes_make_no_event(offline_settings):
    svc = _svc(offline_settings)
    _queued(svc)
    svc.runs.update("data-0123456789ab", lambda r: r.note(svc.clock(), "throttled", "retry", 5.0))
    svc.runs.update("data-0123456789ab", lambda r: r.advance(State.SUBMITTED, svc.clock()))
    assert svc.messages.sent == [] and set(EVENT_TYPES) == {State.DEPLOYED, State.FAILED, State.HELD,
                                                            State.REJECTED, State.RETIRED}


def test_a_held_run_says_so_with_the_gates_numbers(offline_settings):
    """The quality gate's Held move emits chatft.run.held carrying the decision (verdict, means, interval)."""
    svc = _svc(offline_settings)
    _queued(svc)
    decision = {"gate": "enforce", "metric": "eval_loss", "higher_is_better": False, "records": 37, "base": 1.2,
                "tuned": 1.9, "improvement": -0.7, "low": -0.8, "high": -0.6, "min_improvement": 0.0,
                "verdict": "worse", "deploy": False, "reason": "the fine-tune is worse than its base model",
                "seed": 0, "resamples": 9999, "metrics": {}, "report_path": "data-0123456789ab/evaluation.json"}
    for state in (State.SUBMITTED, State.TRAINED, State.EVALUATING):
        svc.runs.update("data-0123456789ab", lambda r, s=state: r.advance(s, svc.clock()))
    svc.runs.update("data-0123456789ab", lambda r: r.advance(State.REGISTERED, svc.clock(), evaluation=decision,
                                                             model_name="data", model_version="1"))
    assert svc.messages.sent == []  # no event on the way
    svc.runs.update("data-0123456789ab", lambda r: r.advance(State.HELD, svc.clock(), decision["reason"]))
    event = svc.messages.sent[0][1].event
    RunEvent.model_validate(event)
    assert event["type"] == "chatft.run.held" and event["data"]["reason"] == decision["reason"]
    gate = event["data"]["evaluation"]
    assert (gate["verdict"], gate["deploy"], gate["metric"]) == ("worse", False, "eval_loss")
    assert (gate["base"], gate["tuned"], gate["low"], gate["high"], gate["records"]) == (1.2, 1.9, -0.8, -0.6, 37)
    assert gate["report_path"] == "data-0123456789ab/evaluation.json"


class _Down(RecordingSender):
    def send(self, queue, message, delay_seconds=0):
        raise ConnectionError("Service Bus unreachable")


def test_a_flush_that_fails_leaves_the_event_for_the_reconciler_and_never_fails_the_run(offline_settings):
    svc = _svc(offline_settings)
    up = svc.messages
    svc.runs.outbox._messages = _Down()
    _queued(svc)
    run = svc.runs.update("data-0123456789ab", lambda r: r.fail("submit", "no quota", svc.clock()))
    assert run.state == State.FAILED  # the run moved
    pending = svc.runs.get("data-0123456789ab").outbox
    assert [e["type"] for e in pending] == ["chatft.run.failed"]
    svc.runs.outbox._messages = up
    assert flush_pending(svc) == 0  # too fresh: its own write's flush may still be under way
    svc.clock.now += timedelta(minutes=2)
    from shared.reconcile import reconcile_runs

    # The reconciler's tick is what flushes it in the app (RECONCILE_SCHEDULE).
    assert reconcile_runs(svc).events_flushed == 1 and svc.runs.get("data-0123456789ab").outbox == []
    [(_, message, message_id, _)] = up.sent
    assert message.event == pending[0] and message_id == DeliverEvent("x", pending[0], message.destination).message_id
    # A second flush of the same event (a crash after sending, before removing) sends the same message id, which
    # duplicate detection drops.
    again = RecordingSender()
    svc.runs.outbox._messages = again
    svc.runs.outbox.flush(run)
    assert again.sent[0][2] == message_id


# --- deliveries to real receivers --------------------------------------------------------------------------------

def _delivery(svc, url, event_type="chatft.run.deployed"):
    event = {"specversion": "1.0", "type": event_type, "source": "/apps/chatft", "id": "data-0123456789ab.9",
             "time": "2026-12-01T12:00:00.000Z", "subject": "runs/data-0123456789ab",
             "datacontenttype": "application/json", "data": {"run_id": "data-0123456789ab"}}
    return DeliverEvent("data-0123456789ab", event, destination_key(url))


def test_a_2xx_delivers_once_signed_with_the_event_id(settings):
    receiver = WebhookReceiver(SECRET)
    try:
        svc = _svc(settings, urls=receiver.url)
        svc.clock = lambda: datetime.now(timezone.utc)
        assert deliver_event(svc, _delivery(svc, receiver.url)).result == "delivered"
        [got] = receiver.deliveries
        assert got.verified["type"] == "chatft.run.deployed" and got.headers["webhook-id"] == "data-0123456789ab.9"
        assert svc.messages.sent == []
    finally:
        receiver.close()


def test_failures_are_retried_with_growing_delays_until_the_window_then_dead_lettered(settings):
    receiver = WebhookReceiver(SECRET, answers=(500,))
    try:
        svc = _svc(settings, urls=receiver.url, retry_base_seconds=10.0, notify_retry_hours=1.0)
        # An injected clock that runs ahead: the receiver soon finds the timestamps too new (401), which is retried
        # like the 500s before it.
        clock = Clock(datetime.now(timezone.utc))
        svc.clock = clock
        message, delays = _delivery(svc, receiver.url), []
        while True:
            outcome = deliver_event(svc, message)
            if outcome.result != "retry":
                break
            _, message, _, delay = svc.messages.sent[-1]
            delays.append(delay)
            clock.now += timedelta(seconds=delay)
        assert outcome.result == "abandoned" and len(delays) >= 5
        # Doubling with equal jitter: never shorter than the last until the 5-minute cap (retries 1-5 here).
        assert all(b >= a for a, b in zip(delays[:5], delays[1:5])) and delays[0] <= 10.0 and max(delays) <= 300
        assert {d.headers["webhook-id"] for d in receiver.deliveries} == {"data-0123456789ab.9"}
        assert len({m.message_id for _, m, _, _ in svc.messages.sent}) == len(svc.messages.sent)
        _, abandoned, _, _ = svc.messages.sent[-1]
        tries = len(receiver.deliveries)
        with pytest.raises(DeliveryAbandoned):  # redelivered until the platform dead-letters it
            deliver_event(svc, abandoned)
        assert len(receiver.deliveries) == tries  # not sent again
    finally:
        receiver.close()


def test_a_410_stops_deliveries_to_that_url_until_the_setting_changes(settings):
    gone, other = WebhookReceiver(SECRET, answers=(410,)), WebhookReceiver(SECRET)
    try:
        svc = _svc(settings, urls=f"{gone.url},{other.url}")
        svc.clock = lambda: datetime.now(timezone.utc)
        assert deliver_event(svc, _delivery(svc, gone.url)).result == "gone"
        assert deliver_event(svc, _delivery(svc, gone.url, "chatft.run.failed")).result == "gone"
        assert len(gone.deliveries) == 1 and svc.messages.sent == []
        assert deliver_event(svc, _delivery(svc, other.url)).result == "delivered"
        changed = _svc(settings, urls=f"{gone.url},{other.url},https://hooks.example.com/new")
        changed.clock = svc.clock
        assert settings.runs_container and gone_mark(changed.settings, gone.url) != gone_mark(svc.settings, gone.url)
        deliver_event(changed, _delivery(changed, gone.url))
        assert len(gone.deliveries) == 2
    finally:
        gone.close()
        other.close()


def test_a_receiver_that_never_answers_times_out_and_is_retried(settings):
    silent = WebhookReceiver(SECRET, hang=True)
    try:
        svc = _svc(settings, urls=silent.url)
        svc.clock = lambda: datetime.now(timezone.utc)
        message = _delivery(svc, silent.url)
        url = silent.url
        outcome = deliver_event(svc, message, post=lambda u, b, h: __import__("shared.notifications", fromlist=[
            "post_webhook"]).post_webhook(u, b, h, timeout=0.5))
        assert outcome.result == "retry" and outcome.status is None and len(silent.deliveries) == 1
        assert url not in str(svc.messages.sent[0][1].to_json())
    finally:
        silent.close()


def test_secrets_and_url_tokens_never_reach_logs_or_messages(settings, caplog):
    receiver = WebhookReceiver(SECRET, answers=(503, 200), path="/hook?token=TOPSECRETTOKEN")
    try:
        svc = _svc(settings, urls=receiver.url)
        svc.clock = lambda: datetime.now(timezone.utc)
        # host.json logs at Information. (At DEBUG, urllib3's own connection lines show request paths.)
        caplog.set_level(logging.INFO)
        _queued(svc)
        svc.runs.update("data-0123456789ab", lambda r: r.fail("submit", "no quota", svc.clock()))
        for _, message, _, _ in list(svc.messages.sent):
            deliver_event(svc, message)
        for _, message, _, _ in list(svc.messages.sent[1:]):
            deliver_event(svc, message)
        assert [d.status for d in receiver.deliveries] == [503, 200]
        history = json.dumps(svc.runs.get("data-0123456789ab").to_dict())
        messages = " ".join(m.to_json() for _, m, _, _ in svc.messages.sent)
        for text in (caplog.text, history, messages):
            assert "TOPSECRETTOKEN" not in text and SECRET not in text and SECRET[6:] not in text
    finally:
        receiver.close()


# --- Event Grid, at the cloud boundary ---------------------------------------------------------------------------

class _Token:
    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        assert scopes == ("https://eventgrid.azure.net/.default",)  # Entra ID for Event Grid
        return AccessToken("entra-token", 2_000_000_000)


@pytest.fixture
def https_topic(tmp_path):
    """An HTTPS stand-in for the topic's endpoint on 127.0.0.1 (self-signed: the SDK sends a bearer token over TLS
    only), keeping each request's path, headers and body."""
    import ipaddress
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.path, dict(self.headers), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}/api/events", seen, str(tmp_path / "cert.pem")
    server.shutdown()
    server.server_close()


def test_the_event_grid_publisher_sends_the_cloudevent_with_the_apps_identity(offline_settings, https_topic):
    endpoint, seen, ca = https_topic
    svc = _svc(offline_settings)
    svc.runs.create(new_run("data-0123456789ab", svc.clock(), upload={"blob": "data.jsonl"}))
    svc.runs.update("data-0123456789ab", lambda r: r.advance(State.VALIDATING, svc.clock()))
    svc.runs.update("data-0123456789ab", lambda r: r.advance(State.REJECTED, svc.clock(), "line 3: invalid_json"))
    event = svc.messages.sent[0][1].event
    EventGridPublisher(endpoint, _Token(), connection_verify=ca).publish(event)
    [(path, headers, body)] = seen
    headers = {k.lower(): v for k, v in headers.items()}
    assert path.startswith("/api/events?api-version=")
    assert headers["authorization"] == "Bearer entra-token"
    assert headers["content-type"].startswith("application/cloudevents-batch+json")
    [sent] = json.loads(body)
    for key in ("specversion", "type", "source", "id", "subject", "data"):
        assert sent[key] == event[key], key
    assert sent["type"] == "chatft.run.rejected" and sent["data"]["reason"] == "line 3: invalid_json"


def test_chatft_notify_test_sends_a_signed_event_to_each_url_and_prints_each_answer(tmp_path, monkeypatch, capsys):
    from chatft_local.cli import main

    ok, gone = WebhookReceiver(SECRET), WebhookReceiver(SECRET, answers=(410,), path="/x?token=TOPSECRETTOKEN")
    try:
        monkeypatch.chdir(tmp_path)  # no local.settings.json here
        monkeypatch.setenv("NOTIFY_WEBHOOK_URLS", f"{ok.url},{gone.url}")
        monkeypatch.setenv("NOTIFY_WEBHOOK_SECRET", SECRET)
        assert main(["notify", "test"]) == 1  # one receiver did not accept it
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"✔ http://127.0.0.1:{ok.url.split(':')[2].split('/')[0]}/… answered 200")
        assert lines[1].startswith("✘ ") and "answered 410" in lines[1]
        assert "TOPSECRETTOKEN" not in "\n".join(lines)
        assert ok.deliveries[0].verified["type"] == "chatft.run.test"  # it verified with the library
        monkeypatch.setenv("NOTIFY_WEBHOOK_URLS", "")
        assert main(["notify", "test"]) == 2 and "NOTIFY_WEBHOOK_URLS is empty" in capsys.readouterr().out
        assert main(["notify", "secret"]) == 0
        fresh = capsys.readouterr().out.strip()
        assert fresh.startswith("whsec_") and Webhook(fresh)  # a secret the library takes
    finally:
        ok.close()
        gone.close()


def test_the_readmes_example_event_is_the_declared_contract():
    """The example a receiver's author copies from the README is a valid RunEvent (no field the app never sends)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Run events", 1)[1]
    example = section.split("```json\n", 1)[1].split("```", 1)[0]
    event = RunEvent.model_validate_json(example)
    assert event.type in EVENT_TYPES.values() and event.data.evaluation is not None
