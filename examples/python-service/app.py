"""A tiny HTTP service in plain Python 3 (standard library only), released by rampart.

rampart starts one copy per version and passes the port on the command line and the
version in APP_VERSION. /healthz is the readiness probe; every other path answers
with the version. Set APP_ERROR_EVERY=N to make every Nth request fail with 500.
"""

import argparse
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "dev")
ERROR_EVERY = int(os.environ.get("APP_ERROR_EVERY", "0"))
count = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global count
        if self.path == "/healthz":
            self.reply(200, b"ok\n")
            return
        count += 1
        if ERROR_EVERY and count % ERROR_EVERY == 0:
            self.reply(500, b"simulated failure\n")
            return
        self.reply(200, f"hello from {VERSION}\n".encode())

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
