"""pipeline/send.py: what a user gets for a wrong path, a file that is not firmware, a chip that is not the
firmware's, and an index that is not an MNIST test image."""
import json

import pytest

from mcu.build import Firmware, build
from pipeline.send import main
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
