"""Speed of the live paths on the host backend: `./run python benchmarks/live.py [RUN_FOLDER] [--frames 200]`.

1. Camera loop: photo-like 640x480 frames of MNIST test digits (pipeline.fake_photo) written to an MJPG video,
   read back by `python -m pipeline.send --camera`'s own loop against the run's C library; prints its
   frames/s (preprocessing + inference, and the whole loop with decoding and printing).
2. Demo page: the page's server (pipeline.demo) on a free local port, sent a drawn digit (black 20-pixel
   strokes on a white 280x280 canvas, as the page's pad draws) as the page sends it (multipart PNG) over
   HTTP; prints the round-trip milliseconds (median, 95th percentile) and the server's own share.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from contract.errors import UserError
from pipeline import backends, demo, fake_photo, send
from pipeline.data import load_originals

ROOT = Path(__file__).resolve().parent.parent
SEED = 20240601
BOUNDARY = "bitmcu-benchmark-boundary"


def camera_loop(backend: backends.Backend, count: int) -> dict:
    import cv2

    _, arrays = load_originals(None, ROOT, False)
    rng = np.random.default_rng(SEED)
    conds = fake_photo.CONDITIONS
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "digits.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
        for i in range(count):
            frame = fake_photo.render(arrays["test_images"][i], rng, conds[i % len(conds)])
            writer.write(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        writer.release()
        return send.camera(backend, send.open_capture(str(video)), out=io.StringIO())


def drawn_seven() -> bytes:
    pad = Image.new("RGB", (280, 280), "white")
    d = ImageDraw.Draw(pad)
    d.line([(70, 60), (210, 60), (140, 230)], fill="black", width=20, joint="curve")
    buf = io.BytesIO()
    pad.save(buf, "PNG")
    return buf.getvalue()


def multipart(png: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"backend\"\r\n\r\nhost\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"drawing.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def demo_round_trips(backend: backends.Backend, count: int) -> tuple[list[float], list[float], int]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = demo.make_server(demo.create_app({"host": backend}), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api/infer"
    body = multipart(drawn_seven())
    rtt, srv, classes = [], [], set()
    try:
        for _ in range(count + 1):
            req = urllib.request.Request(url, data=body, headers={
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req) as resp:
                answer = json.loads(resp.read())
            rtt.append(1000 * (time.perf_counter() - t0))
            srv.append(answer["server_ms"])
            classes.add(answer["class"])
    finally:
        server.shutdown()
        server.server_close()
    if len(classes) != 1:
        raise SystemExit(f"the same drawing got different classes: {sorted(classes)}")
    return rtt[1:], srv[1:], classes.pop()  # the first request warms the connection path up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "artifacts" / "runs" / "default"),
                    help="a run folder holding library/ (default: artifacts/runs/default)")
    ap.add_argument("--frames", type=int, default=200, help="camera frames and demo requests")
    args = ap.parse_args()
    try:
        backend = backends.host(Path(args.run))
    except UserError as e:
        raise SystemExit(f"error: {e}") from None

    cam = camera_loop(backend, args.frames)
    print(f"camera loop, {cam['read']} frames 640x480 (MJPG video) on the host backend: {cam['fps']:.0f} frames/s "
          f"preprocessing + inference, {cam['fps_loop']:.0f} frames/s with decoding and printing "
          f"({cam['no_digit']} with no digit found)")
    rtt, srv, cls = demo_round_trips(backend, args.frames)
    print(f"demo page, a drawn 7 sent {len(rtt)} times over HTTP to the host backend (class {cls}): round trip "
          f"median {np.median(rtt):.1f} ms, 95th percentile {np.percentile(rtt, 95):.1f} ms; "
          f"in the server median {np.median(srv):.1f} ms")


if __name__ == "__main__":
    main()
