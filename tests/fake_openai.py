"""A tiny OpenAI-compatible server for tests (stdlib only, loopback): /v1/completions and
/v1/chat/completions with answers that depend on the prompt, `usage`, optional top logprobs,
and faults on demand. Field names follow openai 3.x's `Completion` / `ChatCompletion` types.

    with FakeOpenAI() as srv:           # srv.base_url -> "http://127.0.0.1:<port>/v1"
        srv.faults += ["429", "500", "drop", "delay:0.2"]   # the next requests, in order
        ...
        srv.count       # requests answered 200, by prompt text
        srv.seen        # every request body received (faults included)

Answers: a prompt containing "BAD" gets HTTP 400 (never retried); a completion is
"Fine. Score: 4 and more" (rating prompts), or "Q: " + the prompt's last 20 characters.
With logprobs asked, the first token's alternatives are {" 4": ln .7, " 5": ln .2, " 3": ln .1}.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOP = {" 4": math.log(0.7), " 5": math.log(0.2), " 3": math.log(0.1)}


def answer_text(prompt: str) -> str:
    return "Fine. Score: 4 and more" if "Score" in prompt or "rate" in prompt.lower() else "Q: " + prompt[-20:]


class FakeOpenAI:
    def __init__(self, logprobs: bool = True) -> None:
        self.logprobs = logprobs
        self.faults: list[str] = []
        self.count: Counter[str] = Counter()
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with srv.lock:
                    srv.seen.append(body)
                    fault = srv.faults.pop(0) if srv.faults else ""
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault.startswith("delay:"):
                    time.sleep(float(fault.split(":")[1]))
                elif fault == "429":
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.1"})
                elif fault:
                    return self._send(int(fault), {"error": {"message": "server error"}})
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                if "BAD" in prompt:
                    return self._send(400, {"error": {"message": "bad prompt"}})
                with srv.lock:
                    srv.count[prompt] += 1
                n = int(body.get("max_tokens") or 16)
                text = " 4" if n == 1 else answer_text(prompt)
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": min(n, len(text.split())),
                         "total_tokens": 0}
                lp = None
                if srv.logprobs and body.get("logprobs"):
                    if chat:
                        toks = [{"token": t, "logprob": -0.1, "bytes": None,
                                 "top_logprobs": [{"token": k, "logprob": v, "bytes": None} for k, v in TOP.items()]
                                 if t == " 4" else []} for t in ["Fine", ".", " Score", ":", " 4"]]
                        lp = {"content": toks, "refusal": None}
                    else:
                        lp = {"tokens": [" 4"], "token_logprobs": [TOP[" 4"]], "top_logprobs": [TOP],
                              "text_offset": [0]}
                if chat:
                    text = "Fine. Score: 4" if body.get("logprobs") else text
                    choice = {"index": 0, "finish_reason": "length", "logprobs": lp,
                              "message": {"role": "assistant", "content": text}}
                    out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [choice], "usage": usage}
                else:
                    out = {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": lp}],
                           "usage": usage}
                self._send(200, out)

        return Handler
