"""A real OpenAI-compatible HTTP server for tests: /v1/completions and /v1/chat/completions answered by the
rule-based dummy model (spae.llm.dummy). Stdlib only.

    python tests/servers/openai_compatible.py [--api-key KEY]

Binds 127.0.0.1 on an ephemeral port and prints "PORT <n>" on stdout once it listens.
Test controls: POST /control {"fail_next": k, "status": 503} makes the next k API requests fail with that
status; GET /stats returns {"requests": n, "failed": m, "max_concurrent": c}.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for spae

from spae.llm.dummy import DummyBackend  # noqa: E402


class State:
    def __init__(self, api_key: str | None, delay_s: float):
        self.lock = threading.Lock()
        self.api_key, self.delay_s = api_key, delay_s
        self.fail_next, self.fail_status = 0, 503
        self.requests = self.failed = self.in_flight = self.max_concurrent = 0
        self.model = DummyBackend()


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, status: int, obj: dict) -> None:
            blob = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def do_GET(self):
            if self.path == "/stats":
                with state.lock:
                    return self._send(200, {"requests": state.requests, "failed": state.failed,
                                            "max_concurrent": state.max_concurrent})
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path == "/control":
                with state.lock:
                    state.fail_next = int(body.get("fail_next", 0))
                    state.fail_status = int(body.get("status", 503))
                    state.delay_s = float(body.get("delay_s", state.delay_s))
                return self._send(200, {"ok": True})
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            with state.lock:
                state.requests += 1
            if state.api_key and self.headers.get("Authorization") != f"Bearer {state.api_key}":
                return self._send(401, {"error": {"message": "invalid api key"}})
            with state.lock:
                failing = state.fail_next > 0
                if failing:
                    state.fail_next -= 1
                    state.failed += 1
                state.in_flight += 1
                state.max_concurrent = max(state.max_concurrent, state.in_flight)
            try:
                if failing:
                    return self._send(state.fail_status, {"error": {"message": "injected failure"}})
                time.sleep(state.delay_s)
                self._send(200, self._answer(body))
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _answer(self, body: dict) -> dict:
            stop = body.get("stop") or []
            stop = [stop] if isinstance(stop, str) else stop
            chat = "messages" in body
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            text = state.model.generate([prompt], int(body.get("max_tokens", 16)), stop)[0]
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                      if chat else {"index": 0, "text": text, "finish_reason": "stop"})
            return {"id": "dummy", "object": "chat.completion" if chat else "text_completion",
                    "model": body.get("model"), "choices": [choice]}

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(State(args.api_key, args.delay_s)))
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
