#!/usr/bin/env python3
"""Static file server for the demo page and the browser tests.

Serves DIR on 127.0.0.1:PORT with CORS headers (the wasm-bindgen test page lives on
another port and fetches the model cross-origin), `application/wasm` for .wasm and
`text/javascript` for .js/.mjs (browsers refuse ES modules and streaming wasm
compilation under other MIME types), and no caching of the page's own files.
/__partial/NAME serves a cut-off copy of NAME (for the download-failure test).

Usage: python3 scripts/serve.py [--port 8089] [--dir models] [--quiet]
       Prints "serving DIR at http://127.0.0.1:PORT/" once listening.
"""
import argparse
import functools
import http.server
import os
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".json": "application/json",
        ".gguf": "application/octet-stream",
        ".ts": "text/plain",
    }
    quiet = False

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Length, Content-Type")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def do_GET(self):
        # /__partial/NAME: announces NAME's full length, sends 1 MiB and drops the
        # connection (the browser tests check that a cut download is an error).
        if self.path.startswith("/__partial/"):
            path = self.translate_path("/" + self.path[len("/__partial/"):])
            if not os.path.isfile(path):
                self.send_error(404)
                return
            size = os.path.getsize(path)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(path, "rb") as f:
                self.wfile.write(f.read(min(size // 2, 1 << 20)))
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def do_OPTIONS(self):
        self.send_response(204)
        self.end_headers()

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8089)
    ap.add_argument("--dir", default=".")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--quiet", action="store_true", help="no request log")
    args = ap.parse_args()
    root = os.path.abspath(args.dir)
    if not os.path.isdir(root):
        sys.exit(f"serve.py: {root} is not a directory")
    Handler.quiet = args.quiet
    handler = functools.partial(Handler, directory=root)
    server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    print(f"serving {root} at http://{args.bind}:{args.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
