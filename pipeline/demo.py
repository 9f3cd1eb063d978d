"""A local web page that classifies a digit drawn, uploaded or filmed, on the host, the emulator or a board.

    python -m pipeline.demo --host artifacts/runs/default [--emulator artifacts/runs/default_serial]
                            [--port /dev/ttyUSB0] [--listen-port 8000]
    ./run doit cfg=configs/default.yaml demo            # the same, from the task graph

The Flask app serves one page (pipeline/demo_page/: HTML, CSS and a small plain script, nothing from the
network; a strict Content-Security-Policy) and one JSON endpoint, POST /api/infer, which takes a picture
(a PNG/JPEG upload, or a canvas's PNG as a data: URL) and a backend name, turns the picture into the model's
N x N input with pipeline.photo.preprocess, runs the backend and answers the input, class, logits, notes and,
for firmware, the chip's cycles and the milliseconds they take at its clock. A bad request (not an image,
a blank drawing, an unknown backend, an upload over MAX_UPLOAD bytes) is answered 4xx with {"error": ...};
the server logs one line and keeps serving. The backends are opened once at start; each has a lock, so
one request at a time talks to the emulator or the board (and to the host library, which is cheap).
"""
from __future__ import annotations

import argparse
import base64
import errno
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from contract.chips import CHIPS
from contract.errors import UserError
from pipeline.backends import Backend

PAGE = Path(__file__).with_name("demo_page")
MAX_UPLOAD = 8 * 1024 * 1024  # bytes: a phone photo fits, a stray video does not
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
DATA_URL = "data:image/png;base64,"

log = logging.getLogger("bitmcu.demo")


def _picture(request) -> tuple[bytes, str]:
    """The request's picture bytes and a name for messages: a multipart `image` file or a PNG data: URL."""
    if "image" in request.files:
        f = request.files["image"]
        return f.read(), f.filename or "upload"
    body = request.get_json(silent=True) if request.is_json else None
    url = (body or {}).get("image") if isinstance(body, dict) else request.form.get("image")
    if not isinstance(url, str) or not url:
        raise UserError("no picture in the request: send a file field `image` or a PNG data: URL")
    if not url.startswith(DATA_URL):
        raise UserError(f"the picture is not a PNG data: URL (it starts {url[:30]!r})")
    try:
        return base64.b64decode(url[len(DATA_URL):], validate=True), "drawing"
    except ValueError:
        raise UserError("the drawing's data: URL is not valid base64") from None


def _backend_name(request, backends: dict[str, Backend]) -> str:
    body = request.get_json(silent=True) if request.is_json else None
    name = (body.get("backend") if isinstance(body, dict) else None) or request.form.get("backend")
    name = name or next(iter(backends))
    if name not in backends:
        raise UserError(f"unknown backend {name!r} (available: {', '.join(backends)})")
    return name


def create_app(backends: dict[str, Backend]):
    """The Flask app over backends (name -> Backend, the first is the default)."""
    from flask import Flask, jsonify, request, send_from_directory
    from werkzeug.exceptions import HTTPException

    import numpy as np

    from pipeline.photo import preprocess

    if not backends:
        raise UserError("the demo needs at least one backend")
    warm = np.full((64, 64), 255, np.uint8)
    warm[12:52, 28:36] = 0
    preprocess(warm, 8)  # its imports and first calls now (~0.1 s), not in the first request's answer
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD
    locks = {name: threading.Lock() for name in backends}

    def info(name: str, b: Backend) -> dict[str, Any]:
        target = getattr(b, "target", None)
        return {"name": name, "image_size": b.image_size, "num_classes": b.num_classes, "target": target,
                "clock_hz": CHIPS[target].clock_hz if target else None, "where": getattr(b, "where", None)}

    @app.after_request
    def headers(resp):
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.get("/")
    def index():
        return send_from_directory(PAGE, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name: str):
        return send_from_directory(PAGE, name)

    @app.get("/favicon.ico")
    def favicon():
        return send_from_directory(PAGE, "icon.svg", mimetype="image/svg+xml")

    @app.get("/api/backends")
    def list_backends():
        return jsonify([info(n, b) for n, b in backends.items()])

    @app.post("/api/infer")
    def infer():
        t0 = time.perf_counter()
        name = _backend_name(request, backends)
        data, what = _picture(request)
        b = backends[name]
        digit = preprocess(data, b.image_size, name=what)
        with locks[name]:
            ans = b.infer(digit.pixels)
        out = info(name, b) | {
            "backend": name, "class": ans.cls, "logits": list(ans.logits), "notes": list(digit.notes),
            "input": digit.pixels.tolist(), "box": list(digit.box), "dark_ink": digit.dark_ink,
            "cycles": ans.cycles, "target": ans.target, "ms": None,
        }
        if ans.cycles is not None and ans.target:
            out["clock_hz"] = CHIPS[ans.target].clock_hz
            out["ms"] = 1000.0 * ans.cycles / out["clock_hz"]
        out["server_ms"] = 1000.0 * (time.perf_counter() - t0)
        return jsonify(out)

    def error(status: int, msg: str):
        log.warning("%s %s -> %d: %s", request.method, request.path, status, msg)
        resp = jsonify({"error": msg})
        resp.status_code = status
        return resp

    @app.errorhandler(UserError)
    def user_error(e: UserError):
        return error(400, str(e))

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if e.code == 413:
            return error(413, f"the upload is larger than {MAX_UPLOAD // (1024 * 1024)} MB; send a smaller picture")
        return error(e.code or 500, f"{e.name}: {e.description}")

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        log.error("%s %s -> 500: %s: %s", request.method, request.path, type(e).__name__, e)
        resp = jsonify({"error": f"internal error ({type(e).__name__}: {e}); the server keeps running"})
        resp.status_code = 500
        return resp

    return app


def open_backends(host: Path | None = None, emulator: Path | None = None, port: str | None = None
                  ) -> dict[str, Backend]:
    """The backends asked for, opened once (the emulator boots its firmware, the board is PINGed)."""
    from pipeline import backends

    out: dict[str, Backend] = {}
    if host is not None:
        out["host"] = backends.host(host)
    if emulator is not None:
        out["emulator"] = backends.emulator(emulator)
    if port is not None:
        out["board"] = backends.board(port)
    if not out:
        raise UserError("no backend: give --host RUN_DIR, --emulator FIRMWARE_OR_RUN_DIR or --port SERIAL")
    sizes = {b.image_size for b in out.values()}
    if len(sizes) > 1:
        print("warning: the backends take different image sizes: "
              + ", ".join(f"{n} {b.image_size}x{b.image_size}" for n, b in out.items()), file=sys.stderr)
    return out


def make_server(app, listen_port: int = 8000, host: str = "127.0.0.1"):
    """A threaded werkzeug server on host:listen_port (0: a free port); a busy port is a UserError."""
    import socket

    from werkzeug.serving import make_server as werkzeug_server

    try:
        if listen_port:  # werkzeug would print its own lines and sys.exit on a busy port: ask first
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
                probe.bind((host, listen_port))
        return werkzeug_server(host, listen_port, app, threaded=True)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {listen_port} on {host} is in use (another demo?); choose another with "
                            "--listen-port N (doit: listen=N), or 0 for a free one") from None
        raise UserError(f"cannot listen on {host}:{listen_port}: {e.strerror}") from None


def serve(backends: dict[str, Backend], listen_port: int = 8000) -> None:
    """Serve the page until Ctrl-C; one log line per failed request (not one per camera frame)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("demo: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server(create_app(backends), listen_port)
    url = f"http://127.0.0.1:{server.server_port}/"
    print(f"demo: {', '.join(f'{n} ({b.image_size}x{b.image_size})' for n, b in backends.items())}", flush=True)
    print(f"demo: open {url}  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()  # werkzeug's ends quietly on Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("\ndemo: stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", type=Path, metavar="RUN_DIR",
                   help="a run folder (artifacts/runs/<config>) or its library entry: the C engine on this machine")
    p.add_argument("--emulator", type=Path, metavar="FIRMWARE_OR_RUN_DIR",
                   help="serial-mode firmware (a run folder or its firmware entry) in the emulator")
    p.add_argument("--port", metavar="SERIAL", help="a board running serial-mode firmware on this serial port")
    p.add_argument("--listen-port", type=int, default=8000, metavar="N",
                   help="the page's port on 127.0.0.1 (default 8000; 0 = a free one)")
    args = p.parse_args(argv)
    try:
        serve(open_backends(args.host, args.emulator, args.port), args.listen_port)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
