"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol (stdlib
only), for the remote API the tests cannot reach. The real `openai` client talks to it.

Behaviours (`mode`): "ok" (a valid completion: four wrong answers, one per line), "401"
(rejects the key and echoes it in the body, as some servers do), "500" (a server error
echoing the key), "garbage" (200 with an HTML page), "no_choices" (200, JSON without
choices). Every request's Authorization header is kept in `seen_keys`.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WRONG = ["Marlowe", "Ben Jonson", "Thomas Kyd", "John Webster"]


def _handler(server):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def _send(self, status: int, body: bytes, kind: str = "application/json"):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = self.headers.get("Authorization", "")
            server.seen_keys.append(key)
            mode = server.mode
            if mode == "401":
                self._send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {key}",
                                                      "type": "invalid_request_error"}}).encode())
            elif mode == "500":
                self._send(500, json.dumps({"error": {"message": f"internal error for {key}"}}).encode())
            elif mode == "garbage":
                self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            elif mode == "no_choices":
                self._send(200, json.dumps({"id": "x", "object": "chat.completion", "model": "stub"}).encode())
            else:
                self._send(200, json.dumps({
                    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "\n".join(WRONG)}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode())

    return Handler


@contextmanager
def openai_stub(mode: str = "ok"):
    """Yields the server (`.url` is the base URL ending in /v1; `.mode` can be changed)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), None)
    server.RequestHandlerClass = _handler(server)
    server.mode, server.seen_keys = mode, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
