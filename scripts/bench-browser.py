#!/usr/bin/env python3
"""Runs the bench page (www/bench.html) in headless Chromium and/or Firefox through WebDriver
(chromedriver / geckodriver, capabilities from webdriver.json) and prints its JSON per browser.

Usage: python3 scripts/bench-browser.py [--browser chromium|firefox|both] [--tokens 32]
           [--runs 2] [--quantization fp32] [--device gpu|cpu|auto] [--config JSON] [--port 8093]
           [--timeout 900]
--device is the config's "device" (the page runs int4 on the CPU when no quantization is given);
the JSON says which device ran ("device").
Needs the package in www/pkg (bash scripts/build-pkg.sh www/pkg) and the model in models/
(bash scripts/fetch-model.sh); the standard library only.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"{}")


def capabilities(browser):
    caps = json.load(open(os.path.join(ROOT, "webdriver.json")))
    if browser == "chromium":
        return {"browserName": "chrome", "goog:chromeOptions": caps["goog:chromeOptions"]}
    return {"browserName": "firefox", "moz:firefoxOptions": caps["moz:firefoxOptions"]}


def run(browser, url, timeout):
    port = free_port()
    cmd = ["chromedriver", f"--port={port}"] if browser == "chromium" else ["geckodriver", "--port", str(port)]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_port(port)
        sid = call(base, "POST", "/session", {"capabilities": {"alwaysMatch": capabilities(browser)}})["value"]["sessionId"]
        try:
            call(base, "POST", f"/session/{sid}/url", {"url": url})
            end = time.time() + timeout
            script = "return [document.title, document.getElementById('result').textContent, document.getElementById('log').textContent]"
            while time.time() < end:
                title, result, log = call(base, "POST", f"/session/{sid}/execute/sync", {"script": script, "args": []})["value"]
                if title in ("done", "error"):
                    return json.loads(result)
                time.sleep(1)
            return {"error": "timeout", "message": f"no result after {timeout} s", "log": log}
        finally:
            call(base, "DELETE", f"/session/{sid}")
    finally:
        driver.terminate()
        driver.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--browser", default="both", choices=["chromium", "firefox", "both"])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--quantization")
    ap.add_argument("--device", choices=["gpu", "cpu", "auto"], help='shortcut for the config\'s "device"')
    ap.add_argument("--config", default="{}")
    ap.add_argument("--prompt", help="the prompt (default: the bench page's story prompt)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=900)
    a = ap.parse_args()
    if not os.path.exists(os.path.join(ROOT, "www/pkg/wsi.js")):
        sys.exit("bench-browser: www/pkg is missing: bash scripts/build-pkg.sh www/pkg")
    os.makedirs(os.path.join(ROOT, "www/models"), exist_ok=True)
    link = os.path.join(ROOT, "www/models", MODEL)
    if not os.path.exists(link):
        os.symlink(os.path.realpath(os.path.join(ROOT, "models", MODEL)), link)
    port = a.port or free_port()
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts/serve.py"), "--port", str(port), "--dir", os.path.join(ROOT, "www"), "--quiet"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        query = {"tokens": a.tokens, "runs": a.runs, "config": a.config}
        if a.quantization:
            query["quantization"] = a.quantization
        if a.device:
            query["device"] = a.device
        if a.prompt:
            query["prompt"] = a.prompt
        url = f"http://127.0.0.1:{port}/bench.html?" + urllib.parse.urlencode(query)
        browsers = ["chromium", "firefox"] if a.browser == "both" else [a.browser]
        failed = False
        for b in browsers:
            out = run(b, url, a.timeout)
            out["browser"] = b
            print(json.dumps(out), flush=True)
            if "error" in out:
                failed = True
            else:
                print(
                    f"# {b}: decode {out['decode_tokens_per_second']:.2f} tok/s, first token "
                    f"{out['first_token_latency_ms']:.0f} ms, prefill {out['prefill_tokens_per_second']:.1f} tok/s, "
                    f"{out['quantization']} on {out.get('device', 'gpu')} ({out['adapter']})",
                    file=sys.stderr,
                )
        sys.exit(1 if failed else 0)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
