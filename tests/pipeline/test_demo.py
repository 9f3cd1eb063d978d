"""The demo page (pipeline/demo.py): its JSON endpoint through Flask's test client, then the page itself in
headless Chromium driven by Playwright (drawing with the mouse, a photo upload, the fake camera, an error).

The tiny run's 8x8 model is too weak to name a photo's digit reliably, so the class to expect is always the
host C engine's answer on preprocess()'s input for the same picture: that is what the page promises.
"""
from __future__ import annotations

import base64
import io
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from contract.chips import CHIPS
from contract.errors import UserError
from pipeline import backends, demo
from pipeline.photo import preprocess

from tests.conftest import ROOT, TINY, entry

pytestmark = pytest.mark.mnist  # the tiny run is trained on MNIST, the pictures are MNIST test digits

SEGMENTS = ["abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg"]


def png(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt)
    return buf.getvalue()


def photo_like(digit28: np.ndarray, size=(320, 240), at=(70, 30), side=170) -> np.ndarray:
    """An MNIST digit as dark ink on light grey paper, upscaled and off-centre in a larger frame."""
    big = np.asarray(Image.fromarray(digit28).resize((side, side), Image.BILINEAR), np.float32)
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    paper = 215 + 25 * xs / size[0]                      # a little uneven light
    ink = np.zeros(paper.shape, np.float32)
    ink[at[1]:at[1] + side, at[0]:at[0] + side] = big / 255.0
    return np.clip(paper * (1 - 0.85 * ink), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mnist_digits():
    from pipeline.data import load_originals

    _, arrays = load_originals(None, ROOT, False)
    return arrays["test_images"][:6], arrays["test_labels"][:6]


@pytest.fixture(scope="module")
def host(tiny_pipeline):
    return backends.host(entry(tiny_pipeline("library"), "library"))


@pytest.fixture(scope="module")
def client(host):
    return demo.create_app({"host": host}).test_client()


def expected(backend, picture) -> int:
    return backend.infer(preprocess(picture, backend.image_size).pixels).cls


def test_upload_answers_the_host_engines_class_on_the_input(client, host, mnist_digits):
    n = host.image_size
    for digit in mnist_digits[0]:
        picture = png(photo_like(digit))
        r = client.post("/api/infer", data={"image": (io.BytesIO(picture), "digit.png"), "backend": "host"})
        assert r.status_code == 200, r.json
        got = r.json
        pixels = preprocess(picture, n).pixels
        assert np.array_equal(np.array(got["input"], np.uint8), pixels) and len(got["input"]) == n
        ans = host.infer(pixels)
        assert got["class"] == ans.cls and got["logits"] == list(ans.logits) and len(got["logits"]) == 10
        assert got["backend"] == "host" and got["cycles"] is None and got["ms"] is None
        assert got["server_ms"] > 0 and isinstance(got["notes"], list)


def test_a_canvas_data_url_with_transparent_paper(client, host):
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 0))            # a canvas never filled: transparent
    ImageDraw.Draw(canvas).line([(90, 60), (190, 60), (120, 230)], fill=(0, 0, 0, 255), width=20)
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = client.post("/api/infer", json={"image": url, "backend": "host"})
    assert r.status_code == 200, r.json
    assert r.json["class"] == expected(host, buf.getvalue())
    assert r.json["dark_ink"] is True  # transparent counted as white paper


def test_bad_requests_answer_a_json_message_and_the_app_goes_on(client, mnist_digits):
    good = png(photo_like(mnist_digits[0][0]))
    blank = png(np.full((200, 200), 240, np.uint8))
    cases = {  # what is sent -> status, words of the message
        "not an image": ({"image": (io.BytesIO(b"hello, not a picture"), "notes.txt")}, 400, "not an image"),
        "blank": ({"image": (io.BytesIO(blank), "blank.png")}, 400, "no digit found"),
        "backend": ({"image": (io.BytesIO(good), "d.png"), "backend": "abacus"}, 400, "unknown backend 'abacus'"),
        "nothing": ({}, 400, "no picture in the request"),
        "huge": ({"image": (io.BytesIO(bytes(demo.MAX_UPLOAD + 1)), "big.png")}, 413, "larger than 8 MB"),
    }
    for what, (data, status, words) in cases.items():
        r = client.post("/api/infer", data=data)
        assert r.status_code == status and words in r.json["error"], (what, r.status_code, r.json)
        assert "Traceback" not in r.get_data(as_text=True)
        again = client.post("/api/infer", data={"image": (io.BytesIO(good), "d.png")})
        assert again.status_code == 200 and 0 <= again.json["class"] <= 9, what
    r = client.post("/api/infer", json={"image": "data:image/jpeg;base64,AAAA"})
    assert r.status_code == 400 and "not a PNG data: URL" in r.json["error"]


def test_page_is_local_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    assert "://" not in html and "<script>" not in html and " style=" not in html  # nothing inline, nothing remote
    for name in ("demo.js", "demo.css", "icon.svg"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and "://" not in r.get_data(as_text=True).replace("http://www.w3.org/", ""), name
    assert client.get("/static/../demo.py").status_code == 404
    assert [b["name"] for b in client.get("/api/backends").json] == ["host"]


def test_a_busy_port_is_named(host):
    first = demo.make_server(demo.create_app({"host": host}), 0)
    try:
        with pytest.raises(UserError, match=rf"port {first.server_port} on 127.0.0.1 is in use.*--listen-port"):
            demo.make_server(demo.create_app({"host": host}), first.server_port)
    finally:
        first.server_close()


@pytest.mark.riscv
def test_emulator_answers_with_cycles_at_the_chips_clock(tiny_pipeline, host, mnist_digits):
    from pipeline import config

    plan = tiny_pipeline("firmware", cfg=config.load(TINY).replace(**{"mcu.mode": "serial"}))
    emu = backends.emulator(entry(plan, "firmware"))
    client = demo.create_app({"host": host, "emulator": emu}).test_client()
    assert [b["name"] for b in client.get("/api/backends").json] == ["host", "emulator"]
    picture = png(photo_like(mnist_digits[0][1]))
    on_host = client.post("/api/infer", data={"image": (io.BytesIO(picture), "d.png"), "backend": "host"}).json
    r = client.post("/api/infer", data={"image": (io.BytesIO(picture), "d.png"), "backend": "emulator"})
    assert r.status_code == 200, r.json
    got = r.json
    assert got["class"] == on_host["class"] and got["logits"] == on_host["logits"]  # the same integer engine
    assert got["cycles"] > 0 and got["target"] == plan.cfg["mcu.target"]
    assert got["clock_hz"] == CHIPS[got["target"]].clock_hz == 48_000_000
    assert got["ms"] == pytest.approx(1000 * got["cycles"] / got["clock_hz"])


# ---- the page in Chromium ------------------------------------------------------------------------------------

def y4m(grey: np.ndarray, frames: int = 4) -> bytes:
    """A still grey picture as a YUV4MPEG2 clip (4:2:0), what Chromium's fake camera plays in a loop."""
    h, w = grey.shape
    chroma = bytes([128]) * ((w // 2) * (h // 2) * 2)
    head = f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode()
    return head + b"".join(b"FRAME\n" + grey.tobytes() + chroma for _ in range(frames))


@pytest.fixture(scope="module")
def browser_run(host, mnist_digits, tmp_path_factory):
    """The demo served on a free port in a thread, and a headless Chromium whose fake camera films a digit."""
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("needs chromium")
    folder = tmp_path_factory.mktemp("demo")
    camera_picture = photo_like(mnist_digits[0][2], size=(320, 240))
    (folder / "camera.y4m").write_bytes(y4m(camera_picture))
    app = demo.create_app({"host": host})
    seen: list[tuple[str, bytes]] = []   # every picture the server was sent, in order
    done: list[int] = []

    @app.before_request
    def record():
        from flask import request
        if request.path == "/api/infer" and "image" in request.files:
            f = request.files["image"]
            seen.append((f.filename, f.read()))
            f.seek(0)

    @app.after_request
    def answered(resp):
        from flask import request
        if request.path == "/api/infer":
            done.append(resp.status_code)
        return resp

    server = demo.make_server(app, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={folder / 'camera.y4m'}"])
        yield {"url": f"http://127.0.0.1:{server.server_port}/", "browser": browser, "seen": seen, "done": done,
               "folder": folder}
        browser.close()
    server.shutdown()
    server.server_close()


@pytest.fixture
def page(browser_run):
    """A fresh page on the demo with its console errors collected (page.errors), ready once the backends list."""
    context = browser_run["browser"].new_context(permissions=["camera"])
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))
    pg.on("pageerror", lambda e: pg.errors.append(f"page error: {e}"))
    pg.goto(browser_run["url"])
    pg.wait_for_function("() => document.body.dataset.ready === '1'")
    yield pg
    context.close()


def shown(pg) -> dict:
    return pg.evaluate("""() => ({
        cls: document.getElementById('cls').textContent,
        lit: Array.from(document.querySelectorAll('.seg.on')).map(s => s.id.slice(4)).sort().join(''),
        bars: document.querySelectorAll('#bars .bar').length,
        top: Array.from(document.querySelectorAll('#bars .bar')).findIndex(b => b.classList.contains('top')),
        input: document.getElementById('input').width,
        source: document.body.dataset.source, error: document.getElementById('error').hidden ? null :
            document.getElementById('error').textContent, timing: document.getElementById('timing').textContent})""")


def wait_shown(pg, cls: int, source: str) -> dict:
    pg.wait_for_function("([c, s]) => document.getElementById('cls').textContent === c && "
                         "document.body.dataset.source === s", arg=[str(cls), source])
    got = shown(pg)
    assert got["lit"] == SEGMENTS[cls] and got["bars"] == 10 and got["top"] == cls and got["error"] is None, got
    return got


@pytest.mark.chromium
def test_drawing_with_the_mouse(page, host):
    box = page.locator("#pad").bounding_box()
    strokes = [[(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)], [(0.35, 0.5), (0.65, 0.5)]]  # a 7 with a bar
    t0 = time.perf_counter()
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0] * box["width"], box["y"] + stroke[0][1] * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
        page.mouse.up()
    drawn = base64.b64decode(page.evaluate("document.getElementById('pad').toDataURL('image/png')").split(",")[1])
    want = expected(host, drawn)
    got = wait_shown(page, want, "drawing")
    round_trip = time.perf_counter() - t0
    assert got["input"] == host.image_size
    print(f"\ndrawn digit on the host backend: {got['timing']}; from the last mouse-up to the page showing it "
          f"(Playwright's view) {1000 * round_trip:.0f} ms including drawing")
    page.click("#clear")
    assert shown(page)["cls"] == "-" and shown(page)["lit"] == ""
    assert page.errors == []


@pytest.mark.chromium
def test_photo_upload(page, host, mnist_digits, browser_run):
    path = browser_run["folder"] / "photo.jpg"
    path.write_bytes(png(photo_like(mnist_digits[0][3], size=(640, 480), at=(200, 120), side=260), "JPEG"))
    page.set_input_files("#photo", str(path))
    got = wait_shown(page, expected(host, path.read_bytes()), "photo")
    assert got["input"] == host.image_size
    assert page.errors == []


@pytest.mark.chromium
def test_camera_frames(page, host, browser_run):
    seen, done = browser_run["seen"], browser_run["done"]
    page.click("#camera")
    page.wait_for_function("() => document.body.dataset.source === 'camera'")
    page.wait_for_timeout(700)            # a few more frames
    page.click("#camera")                 # stop; the frame in flight still answers
    assert page.inner_text("#camera") == "Start camera"
    deadline = time.monotonic() + 10
    while len(done) < len(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    frames = [data for name, data in seen if name.startswith("camera")]
    assert len(frames) >= 2 and Image.open(io.BytesIO(frames[-1])).size == (320, 240)
    want = expected(host, frames[-1])     # frames go one at a time: the last sent is the last shown
    wait_shown(page, want, "camera")
    classes = {expected(host, f) for f in frames}
    print(f"\ncamera: {len(frames)} frames, classes {sorted(classes)}")
    assert page.errors == []


@pytest.mark.chromium
def test_an_error_is_shown_on_the_page(page, browser_run, host, mnist_digits):
    bad = browser_run["folder"] / "notes.txt"
    bad.write_text("not a picture")
    page.set_input_files("#photo", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert "notes.txt: not an image" in page.inner_text("#error")
    # the one console line is Chromium's note of the 400 answer; nothing else went wrong
    assert all("status of 400" in e for e in page.errors) and len(page.errors) <= 1, page.errors
    path = browser_run["folder"] / "after.png"
    path.write_bytes(png(photo_like(mnist_digits[0][4])))
    page.set_input_files("#photo", str(path))
    wait_shown(page, expected(host, path.read_bytes()), "photo")   # the error is cleared, the server goes on
