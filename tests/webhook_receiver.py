"""A webhook receiver on 127.0.0.1 as a user would write one: it verifies each delivery with the `standardwebhooks`
library (the README's recipe) and answers what the test scripts: per `webhook-id`, the statuses in `answers` in
turn (the last one repeats), or, with `hang=True`, nothing at all until it is closed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Delivery:
    at: float  # time.monotonic() when it arrived
    headers: dict[str, str]
    body: bytes
    verified: Any  # the parsed event when the signature verified, else None
    status: int  # what the receiver answered


class WebhookReceiver:
    def __init__(self, secret: str, answers: tuple[int, ...] = (200,), hang: bool = False, path: str = "/hook"):
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver, webhook = self, Webhook(secret)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if hang:
                    with receiver._lock:
                        receiver.deliveries.append(Delivery(time.monotonic(), headers, body, None, 0))
                    receiver._release.wait(120)
                    return
                try:
                    verified = webhook.verify(body, headers)
                except WebhookVerificationError:
                    verified = None
                with receiver._lock:
                    seen = sum(1 for d in receiver.deliveries if d.headers.get("webhook-id") == headers.get(
                        "webhook-id"))
                    status = 401 if verified is None else answers[min(seen, len(answers) - 1)]
                    receiver.deliveries.append(Delivery(time.monotonic(), headers, body, verified, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def by_type(self, event_type: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.verified and d.verified.get("type") == event_type]

    def for_run(self, run_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.verified and d.verified["data"]["run_id"] == run_id]

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
