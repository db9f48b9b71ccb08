"""Service Bus sending from many threads, without a broker: an injected client factory records which thread uses
each client and sender, and detects two threads inside one sender at once (the SDK does not promise that is safe)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import pytest

from shared.messages import SubmitRun
from shared.messaging import ServiceBusSender
from tests.fakes import RawMessage


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: list[FakeClient] = []
        self.overlaps: list[str] = []  # a sender or client entered by a second thread while one was inside
        self.sent: list[tuple[str, object]] = []
        self.fail_next_send = 0

    def client(self) -> "FakeClient":
        client = FakeClient(self)
        with self.lock:
            self.clients.append(client)
        return client


class Guarded:
    """Records the threads that call it and flags concurrent use."""

    def __init__(self, recorder: Recorder, what: str) -> None:
        self.recorder, self.what = recorder, what
        self.threads: set[int] = set()
        self._inside = threading.Lock()
        self.closed = False

    def _enter(self) -> None:
        self.threads.add(threading.get_ident())
        if not self._inside.acquire(blocking=False):
            self.recorder.overlaps.append(self.what)
            self._inside.acquire()

    def _exit(self) -> None:
        self._inside.release()

    def close(self) -> None:
        self.closed = True


class FakeClient(Guarded):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder, "client")
        self.senders: list[FakeSender] = []

    def get_queue_sender(self, queue: str) -> "FakeSender":
        self._enter()
        try:
            time.sleep(0.001)
            sender = FakeSender(self.recorder, queue)
            self.senders.append(sender)
            return sender
        finally:
            self._exit()


class FakeSender(Guarded):
    def __init__(self, recorder: Recorder, queue: str) -> None:
        super().__init__(recorder, f"sender {queue}")
        self.queue = queue

    def send_messages(self, message) -> None:
        self._enter()
        try:
            time.sleep(0.002)  # long enough for a second thread to arrive if the sender were shared
            with self.recorder.lock:
                if self.recorder.fail_next_send:
                    self.recorder.fail_next_send -= 1
                    raise ConnectionError("link detached")
                self.recorder.sent.append((self.queue, message))
        finally:
            self._exit()


@pytest.fixture
def recorder():
    return Recorder()


def test_each_thread_has_its_own_client_and_senders(recorder):
    sender = ServiceBusSender("ns.servicebus.windows.net", client_factory=recorder.client)
    threads, per_thread, start = 8, 25, threading.Barrier(8)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        start.wait()
        try:
            for i in range(per_thread):
                queue = "runs" if i % 2 else "deployments"
                sender.send(queue, RawMessage({"run_id": f"r{n}-{i}"}, f"m{n}-{i}"), delay_seconds=5 if i == 0 else 0)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    assert errors == [] and recorder.overlaps == []
    assert len(recorder.clients) == threads  # one client per thread, reused for all its sends
    for client in recorder.clients:
        assert len(client.threads) == 1 and len(client.senders) == 2  # one sender per queue
        assert all(s.threads == client.threads for s in client.senders)
    assert len(recorder.sent) == threads * per_thread
    ids = {str(m.message_id) for _, m in recorder.sent}
    assert len(ids) == threads * per_thread
    first = next(m for _, m in recorder.sent if m.message_id == "m3-0")
    assert json.loads(str(first)) == {"run_id": "r3-0"} and first.content_type == "application/json"
    assert first.scheduled_enqueue_time_utc > datetime.now(timezone.utc)


def test_a_failed_sender_is_closed_and_replaced(recorder):
    sender = ServiceBusSender("ns.servicebus.windows.net", client_factory=recorder.client)
    recorder.fail_next_send = 1
    with pytest.raises(ConnectionError):
        sender.send("runs", SubmitRun("a"))
    sender.send("runs", SubmitRun("a"))
    (client,) = recorder.clients
    assert [s.closed for s in client.senders] == [True, False]
    assert len(recorder.sent) == 1


def test_close_reaches_every_threads_client_and_a_later_send_opens_a_new_one(recorder):
    sender = ServiceBusSender("ns.servicebus.windows.net", client_factory=recorder.client)
    other = threading.Thread(target=sender.send, args=("runs", RawMessage({"x": 1}, "m1")))
    other.start()
    other.join()
    sender.send("runs", RawMessage({"x": 2}, "m2"))
    sender.close()
    assert len(recorder.clients) == 2 and all(c.closed for c in recorder.clients)
    sender.send("runs", RawMessage({"x": 3}, "m3"))
    assert len(recorder.clients) == 3 and not recorder.clients[-1].closed
