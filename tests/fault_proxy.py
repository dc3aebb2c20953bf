"""A loopback HTTP proxy for fault tests of the served engine: it forwards POSTs to an upstream
OpenAI-compatible server and injects faults that the test controls (stdlib only).

    with FaultProxy("http://127.0.0.1:8000") as proxy:   # proxy.base_url -> ".../v1"
        proxy.faults += ["429", "500", "drop", "delay:1.0"]   # the next requests, in order
        proxy.answered    # Counter of request bodies (JSON, sorted keys) the upstream answered 200
        proxy.received    # every request body received

An upstream that is down (killed, restarting) is answered 502, as a load balancer would."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def body_key(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[str] = []
        self.answered: Counter[str] = Counter()
        self.received: list[dict[str, Any]] = []
        self.injected: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                with proxy.lock:
                    proxy.received.append(body)
                    fault = proxy.faults.pop(0) if proxy.faults else ""
                    if fault:
                        proxy.injected[fault.split(":")[0]] += 1
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault.startswith("delay:"):
                    time.sleep(float(fault.split(":")[1]))
                elif fault == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "1"})
                elif fault:
                    return self._send(int(fault), b'{"error": {"message": "injected"}}')
                req = urllib.request.Request(proxy.upstream + self.path, raw, {"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=300) as r:
                        data, status = r.read(), r.status
                except urllib.error.HTTPError as e:
                    data, status = e.read(), e.code
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    return self._send(502, b'{"error": {"message": "upstream down"}}')
                if status == 200:
                    with proxy.lock:
                        proxy.answered[body_key(body)] += 1
                self._send(status, data)

        return Handler
