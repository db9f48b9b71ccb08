"""Run events end to end: the local host serving function_app.py on Azurite, the local ML workspace, and webhook
receivers on 127.0.0.1 that verify each delivery with the `standardwebhooks` library (tests/webhook_receiver.py).

One module host; one rejected upload, one run failed at submit (`LOCAL_FAULTS=submit_job=permanent:1`), one run
trained and deployed. Four receivers: one that accepts, one that answers 500 three times per event then 200, one
that answers 410 and one that never answers.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from chatft_local.host import LocalHost
from chatft_local.uploads import upload_training_file
from shared.config import Settings
from shared.notifications import gone_mark, new_secret
from shared.run_store import RunStore
from shared.runs import State
from shared.storage import Blobs
from tests.harness_local import poll
from tests.test_end_to_end import names_env, wait_for_run, write_sample
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow

SECRET = new_secret()


def _until(check, what: str, timeout: float = 120.0):
    value = poll(check, timeout)
    if not value:
        raise AssertionError(f"timed out waiting for {what}")
    return value


class Scene:
    pass


@pytest.fixture(scope="module")
def scene(azurite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notify")
    ok, flaky = WebhookReceiver(SECRET), WebhookReceiver(SECRET, answers=(500, 500, 500, 200))
    gone, silent = WebhookReceiver(SECRET, answers=(410,)), WebhookReceiver(SECRET, hang=True)
    receivers = (ok, flaky, gone, silent)
    env = {**names_env(tmp / "state"), "NOTIFY_QUEUE": "n" + uuid.uuid4().hex[:8] + "-notify",
           "NOTIFY_WEBHOOK_URLS": ",".join(r.url for r in receivers), "NOTIFY_WEBHOOK_SECRET": SECRET,
           "RETRY_BASE_SECONDS": "2", "LOCAL_FAULTS": "submit_job=permanent:1"}
    host = LocalHost(port=0, env=env).start()
    try:
        s = Scene()
        s.ok, s.flaky, s.gone, s.silent = receivers
        s.settings = Settings.from_env({**os.environ, **env})
        s.store = RunStore(s.settings.storage_connection, s.settings.runs_table)
        blobs = Blobs(s.settings)
        started = time.monotonic()

        # 1. A rejected upload. The receiver answering 410 hears of it, and of nothing after.
        bad = tmp / "bad.jsonl"
        bad.write_text("not json\n" * 12)
        s.rejected = upload_training_file(s.settings, bad, {}, blob_name="bad.jsonl")[1]
        wait_for_run(s.store, s.rejected, (State.REJECTED,), timeout=60)
        _until(lambda: blobs.blob(s.settings.runs_container, gone_mark(s.settings, gone.url)).exists(),
               "the 410 to be remembered")

        # 2. A run failed at submit (the injected permanent fault), then 3. one trained and deployed.
        s.failed = upload_training_file(s.settings, write_sample(tmp / "first.jsonl", seed=3), {"epochs": "1"},
                                        blob_name="first.jsonl")[1]
        wait_for_run(s.store, s.failed, (State.FAILED,), timeout=60)
        s.deployed = upload_training_file(s.settings, write_sample(tmp / "second.jsonl", seed=4), {"epochs": "1"},
                                          blob_name="second.jsonl")[1]
        s.deployed_run = wait_for_run(s.store, s.deployed, (State.DEPLOYED, State.FAILED))
        s.took = time.monotonic() - started
        for run_id in (s.rejected, s.failed, s.deployed):
            _until(lambda: ok.for_run(run_id), f"the event of run {run_id}")
        _until(lambda: [d for d in flaky.deliveries if d.status == 200 and d.verified["data"]["run_id"] == s.rejected],
               "the flaky receiver to accept the rejected run's event", timeout=90)
        yield s
    finally:
        host.stop()
        for r in receivers:
            r.close()


def test_a_rejected_upload_a_failed_run_and_a_deployed_run_each_deliver_one_verified_event(scene):
    assert scene.deployed_run.state == State.DEPLOYED, scene.deployed_run.history
    want = {scene.rejected: "chatft.run.rejected", scene.failed: "chatft.run.failed",
            scene.deployed: "chatft.run.deployed"}
    for run_id, event_type in want.items():
        [delivery] = scene.ok.for_run(run_id)
        event = delivery.verified
        assert event["type"] == event_type and event["specversion"] == "1.0"
        assert event["subject"] == f"runs/{run_id}" and delivery.headers["webhook-id"] == event["id"]
        assert event["data"]["links"]["run"] == f"/api/runs/{run_id}"
    assert "is not JSON" in scene.ok.for_run(scene.rejected)[0].verified["data"]["reason"]
    failed = scene.ok.for_run(scene.failed)[0].verified["data"]
    assert failed["stage"] == "submit" and failed["state"] == "Failed"
    deployed = scene.ok.for_run(scene.deployed)[0].verified["data"]
    assert deployed["model"]["name"] == scene.deployed_run.model_name and deployed["endpoint"]
    assert all(d.verified is not None for d in scene.ok.deliveries)  # every delivery verified
    # The outbox is emptied once its delivery messages are sent, which may be just after the receiver got them.
    assert poll(lambda: scene.store.get(scene.deployed).outbox == [], 60), scene.store.get(scene.deployed).outbox


def test_a_receiver_that_fails_three_times_gets_the_same_webhook_id_with_growing_delays(scene):
    tries = [d for d in scene.flaky.deliveries if d.verified and d.verified["data"]["run_id"] == scene.rejected]
    assert [d.status for d in tries] == [500, 500, 500, 200]
    assert len({d.headers["webhook-id"] for d in tries}) == 1
    assert len({d.body for d in tries}) == 1  # the same body; each try signed anew (its own timestamp)
    gaps = [b.at - a.at for a, b in zip(tries, tries[1:])]
    # RETRY_BASE_SECONDS=2: retries wait in [1, 2], [2, 4], [4, 8] seconds.
    assert gaps[2] > gaps[0] and gaps[0] >= 0.5, gaps


def test_a_receiver_that_answers_410_gets_nothing_more(scene):
    assert [d.verified["type"] for d in scene.gone.deliveries] == ["chatft.run.rejected"]


def test_a_wrong_secret_is_refused_by_the_receiver(scene):
    delivery = scene.ok.for_run(scene.deployed)[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(delivery.body, delivery.headers)


def test_a_receiver_that_never_answers_does_not_slow_or_fail_the_run(scene):
    # The silent receiver held a delivery of every event open for the 15 s timeout, while the runs went on.
    _until(lambda: {d.headers["webhook-id"].rsplit(".", 1)[0] for d in scene.silent.deliveries} >= {
        scene.rejected, scene.failed, scene.deployed}, "the silent receiver to be called for every event", 60)
    assert scene.deployed_run.state == State.DEPLOYED
    [deployed] = scene.ok.for_run(scene.deployed)
    moved = [t.at for t in scene.deployed_run.history if t.state == State.DEPLOYED][-1]
    assert deployed.verified["time"] == moved
