#!/usr/bin/env python3
"""Hammer IoT example app: answers every GET with the message in ./VERSION."""
import http.server
import os
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        version = (HERE / "VERSION").read_text().strip()
        body = f"hello from hammer {version}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")
    server = http.server.ThreadingHTTPServer((host, port), Hello)
    print(f"hello-app {(HERE / 'VERSION').read_text().strip()} listening on {host}:{port}", flush=True)
    server.serve_forever()
