"""pipeline/send.py: what a user gets for a wrong path, a file that is not firmware, a chip that is not the
firmware's, and an index that is not an MNIST test image; the host backend, photos, --raw and --roi, and
--camera on a video file against the host C engine and the emulated firmware."""
import json
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from mcu.build import Firmware, build
from pipeline.send import main
from tests.conftest import entry
from tests.mcu.test_build import TINY, model_of


@pytest.fixture(scope="module")
def v003_serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("fw")
    b = build(Firmware(target="ch32v003", mode="serial"), model_of(TINY), out)
    (out / "summary.json").write_text(json.dumps(b.summary(out)))
    return out


def test_emulator_paths_that_are_not_firmware(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    for path, message in ((tmp_path / "nope", "no such file or folder"),
                          (tmp_path / "empty", "not a firmware stage folder (no firmware.elf and summary.json)"),
                          (tmp_path / "notes.txt", "not an ELF file")):
        assert main(["--emulator", str(path), "0"]) == 1
        err = capsys.readouterr().err
        assert f"{path}: {message}; give a run folder" in err and "Traceback" not in err


@pytest.mark.riscv
def test_another_chip_than_the_firmware_is_built_for_warns(v003_serial, capsys):
    assert main(["--emulator", str(v003_serial / "firmware.elf"), "--target", "ch32v002", "-1"]) == 1
    err = capsys.readouterr().err
    assert "was built for rv32e" in err and "emulating it as ch32v002" in err
    assert "MNIST test index -1 is out of range (0 to 9999)" in err
    assert main(["--emulator", str(v003_serial), "--target", "ch32v002", "-1"]) == 1
    assert "was built for ch32v003; emulating it as ch32v002" in capsys.readouterr().err
    assert main(["--emulator", str(v003_serial), "-1"]) == 1
    assert "warning" not in capsys.readouterr().err


# ---- the host backend, pictures, --raw and --roi ----------------------------------------------------------------

def _c_engine(library_entry, images):
    from engine.build import load_library, run_c
    from pipeline.stages import library

    return run_c(load_library(library.library(library_entry)), np.asarray(images, np.uint8), trace=False)


def _answers(out: str, prefix: str = "") -> dict[str, tuple[int, list[int]]]:
    """Printed answer lines -> {what: (class, logits)}."""
    got = {}
    for m in re.finditer(rf"^({prefix}[^\n]*?): class (\d+), logits \[([-\d, ]+)\]", out, re.M):
        got[m.group(1)] = (int(m.group(2)), [int(v) for v in m.group(3).split(", ")])
    return got


def _on_paper(digit: np.ndarray, size: tuple[int, int], at: tuple[int, int], side: int) -> np.ndarray:
    """An MNIST digit drawn dark on light paper with uneven light, BGR, size (w, h)."""
    w, h = size
    paper = np.linspace(235, 200, w, dtype=np.float32)[None, :].repeat(h, 0)
    ink = cv2.resize(digit, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    x, y = at
    paper[y:y + side, x:x + side] = paper[y:y + side, x:x + side] * (1 - ink) + 30 * ink
    return np.repeat(np.round(paper).astype(np.uint8)[:, :, None], 3, axis=2)


@pytest.fixture(scope="module")
def mnist_digits():
    from pipeline.data import load_originals
    from pipeline.stage import ROOT

    return load_originals(None, ROOT, False)[1]["test_images"][:4]


@pytest.mark.mnist
def test_host_answers_like_the_c_engine_on_indices_and_photos(tiny_pipeline, mnist_digits, tmp_path, capsys):
    from pipeline.photo import preprocess
    from pipeline.send import mnist_test

    lib = entry(tiny_pipeline("library"), "library")
    capsys.readouterr()  # what building printed
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), _on_paper(mnist_digits[3], (200, 150), (70, 30), 90))
    assert main(["--host", str(lib), "0", "1", str(photo)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"host: C library {lib}, 8x8 images, 10 classes\n") and "cycles" not in out
    images = [*mnist_test([0, 1], 8)[0], preprocess(photo, 8).pixels]
    want = _c_engine(lib, images)
    got = _answers(out)
    assert list(got) == ["mnist 0 (label 7)", "mnist 1 (label 2)", str(photo)]
    assert [g[0] for g in got.values()] == want["preds"].tolist()
    assert [g[1] for g in got.values()] == want["logits"].tolist()


@pytest.mark.mnist
def test_raw_is_the_plain_downscale_and_roi_is_checked(tiny_pipeline, mnist_digits, tmp_path, capsys):
    from pipeline.data import downscale
    from pipeline.send import to_square

    lib = entry(tiny_pipeline("library"), "library")
    capsys.readouterr()  # what building printed
    picture = _on_paper(mnist_digits[0], (60, 40), (12, 4), 30)
    cv2.imwrite(str(tmp_path / "p.png"), picture)
    grey = np.asarray(Image.open(tmp_path / "p.png").convert("L"))
    assert main(["--host", str(lib), "--raw", "--invert", str(tmp_path / "p.png")]) == 0
    want = _c_engine(lib, downscale(to_square(255 - grey)[None], 8))
    assert _answers(capsys.readouterr().out)[str(tmp_path / "p.png")] == (want["preds"][0], want["logits"][0].tolist())
    assert main(["--host", str(lib), "--raw", "--roi", "10,2,34,34", str(tmp_path / "p.png")]) == 0
    want = _c_engine(lib, downscale(grey[None, 2:36, 10:44], 8))
    assert _answers(capsys.readouterr().out)[str(tmp_path / "p.png")][1] == want["logits"][0].tolist()
    for args in (["--roi", "50,0,20,20"], ["--raw", "--roi", "0,30,10,20"]):
        assert main(["--host", str(lib), *args, str(tmp_path / "p.png")]) == 1
        err = capsys.readouterr().err
        assert "is not inside the 60x40 picture" in err and "Traceback" not in err


def test_bad_arguments_are_refused_by_the_parser(tmp_path, capsys):
    for args, message in ((["--roi", "1,2,3", "0"], "'1,2,3': expected X,Y,W,H, four integers"),
                          (["--roi", "a,b,c,d", "0"], "expected X,Y,W,H"),
                          (["--roi", "0,0,0,5", "0"], "W and H > 0"),
                          (["--roi=-1,0,5,5", "0"], "X and Y must be >= 0"),
                          (["--invert", "0"], "--invert goes with --raw"),
                          (["--camera", "x.avi", "--every", "0"], "'0': expected a number above 0"),
                          (["--camera", "x.avi", "0"], "not both"),
                          ([], "or --camera"),
                          (["--emulator", str(tmp_path), "0"], "not allowed with argument --host")):
        with pytest.raises(SystemExit) as e:
            main(["--host", str(tmp_path), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, (args, err)


def test_a_folder_without_a_library_names_the_command_to_build_it(tmp_path, capsys):
    (tmp_path / "myrun").mkdir()
    assert main(["--host", str(tmp_path / "myrun"), "0"]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path / 'myrun'}: holds no library stage entry; build it with "
                   "`./run doit cfg=configs/myrun.yaml library` (the run folder is named after its config)\n")


# ---- --camera on a video file -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video(mnist_digits, tmp_path_factory):
    """An MJPG .avi of 320x240 frames: MNIST test digits 0..3 drawn dark on light (moving), then a blank frame."""
    path = tmp_path_factory.mktemp("video") / "digits.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert vw.isOpened()
    for i, d in enumerate(mnist_digits):
        vw.write(_on_paper(d, (320, 240), (60 + 30 * i, 40 + 10 * i), 140))
    vw.write(np.full((240, 320, 3), 220, np.uint8))
    vw.release()
    return path


def _expected_frames(video, library_entry) -> list[tuple[int, list[int]] | None]:
    """What the host C engine answers on each decoded frame's preprocessed input; None: no digit."""
    from contract.errors import UserError
    from pipeline.photo import preprocess

    cap, want = cv2.VideoCapture(str(video)), []
    while True:
        ok, frame = cap.read()
        if not ok:
            return want
        try:
            pixels = preprocess(frame, 8).pixels
        except UserError:
            want.append(None)
            continue
        out = _c_engine(library_entry, pixels[None])
        want.append((int(out["preds"][0]), out["logits"][0].tolist()))


def _frames(out: str) -> list[tuple[int, list[int]] | None]:
    lines = [line for line in out.splitlines() if line.startswith("frame ")]
    answers = _answers(out, "frame ")
    assert [line.split(":")[0] for line in lines] == [f"frame {i}" for i in range(len(lines))]
    return [answers.get(f"frame {i}") if not line.endswith(": no digit") else None for i, line in enumerate(lines)]


@pytest.mark.mnist
def test_camera_on_a_video_file_with_the_host_backend(tiny_pipeline, video, capsys):
    lib = entry(tiny_pipeline("library"), "library")
    capsys.readouterr()  # what building printed
    assert main(["--host", str(lib), "--camera", str(video)]) == 0
    out = capsys.readouterr().out
    want = _expected_frames(video, lib)
    assert len(want) == 5 and want[-1] is None and all(want[:4])
    assert _frames(out) == want
    assert re.search(r"^5 frames \(1 with no digit\) of 5 read: [\d.]+ frames/s preprocessing \+ inference", out, re.M)
    assert main(["--host", str(lib), "--camera", str(video), "--every", "2", "--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()[1:3]] == ["frame 0", "frame 2"]
    assert "2 frames (0 with no digit) of 3 read" in out


def test_camera_that_cannot_be_opened_is_a_clear_error(tmp_path, capsys):
    for source, message in ((str(tmp_path / "no.avi"), f"error: {tmp_path / 'no.avi'}: no such video file"),
                            ("99", "error: camera 99 cannot be opened")):
        assert main(["--host", str(tmp_path), "--camera", source]) == 1  # checked before the backend is opened
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    (tmp_path / "notes.avi").write_text("not a video")
    assert main(["--host", str(tmp_path), "--camera", str(tmp_path / "notes.avi")]) == 1
    assert "notes.avi: OpenCV cannot read it as a video" in capsys.readouterr().err


@pytest.mark.mnist
@pytest.mark.riscv
def test_camera_on_a_video_file_with_the_emulated_firmware(tiny_pipeline, video, capsys):
    from pipeline import config
    from tests.conftest import TINY as TINY_YAML

    plan = tiny_pipeline("firmware", config.load(TINY_YAML).replace(**{"mcu.mode": "serial"}))
    fw, lib = entry(plan, "firmware"), entry(plan, "library")
    capsys.readouterr()
    assert main(["--emulator", str(fw), "--camera", str(video)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("firmware: ch32v003, 8x8 images, 10 classes (emulator)\n")
    assert _frames(out) == _expected_frames(video, lib)
    cycles = re.findall(r"logits \[[^]]*\], (\d+) cycles = ([\d.]+) ms at 48 MHz$", out, re.M)
    assert len(cycles) == 4 and all(abs(int(c) / 48e3 - float(ms)) < 1e-3 for c, ms in cycles)
