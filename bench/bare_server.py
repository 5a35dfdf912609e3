"""The physical ceiling for bench.py: a bare standard-library HTTP server that parses the JSON body
of POST /predict and answers a constant, with HTTP/1.1 keep-alive and TCP_NODELAY (without it,
Nagle's algorithm and the client's delayed ACK add ~40 ms to every response, because
BaseHTTPRequestHandler sends headers and body in separate writes). No model, no validation, no
metrics: whatever the monitor serves below this rate is what its own work costs.

    python bench/bare_server.py --port 8001
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = json.dumps({"prediction": 1660.4}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # /healthz, so that bench.py can wait for it like for the monitor
        self._answer(200, b'{"status": "ok"}')

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            json.loads(self.rfile.read(length))
        except ValueError:
            self._answer(400, b'{"error": "invalid JSON"}')
            return
        self._answer(200, ANSWER)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    server = Server((args.host, args.port), Handler)
    # SIGTERM (bench.py stopping it) ends serve_forever from another thread
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
