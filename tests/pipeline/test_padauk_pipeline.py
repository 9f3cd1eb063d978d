"""The pipeline for the Padauk parts: config rules, the firmware stage's image count and size gate, the emulate
stage held to the C engine in spdk (and a difference caught with its table), `doit flash`'s tool."""
import re
import stat

import pytest

from mcu.fit import demo_build
from mcu.flash import FlashError
from mcu.padauk import sim
from pipeline import config
from pipeline import flash as pipeline_flash
from pipeline.stage import summary
from tests.conftest import TINY, entry

# tiny.yaml (8x8, FC 16/16) as 2bitsym on the PFS154: int16 accumulators, fits with room for test images
PFS154 = {"mcu.target": "pfs154", "quant.formats": ["2bitsym"]}


def tiny(**changes):
    return config.load(TINY).replace(**changes)


# ---- without the tools -----------------------------------------------------------------------------------------

def test_padauk_targets_are_config_choices_with_their_rules():
    assert tiny(**PFS154)["mcu.target"] == "pfs154"
    assert tiny(**{"mcu.target": "pms150c", "model.widths": [4, 4]})["mcu.kernels"] == "sram"   # ignored there
    cases = [({"quant.formats": ["fp130"]}, r"quant.formats: mcu.target pfs154: the padauk engine does not run "
              r"format fp130 \(allowed: binary, binarybalanced, ternary, 2bitsym, 4bitsym\)"),
             ({"quant.formats": ["8bit"]}, r"quant.formats: mcu.target pfs154: .* format 8bit"),
             ({"mcu.mode": "serial"}, r"mcu.mode: serial: mcu.target pfs154 runs demo firmware only \(allowed: demo"),
             ({"mcu.segment_pins": ["PC0", "PC1", "PC2", "PC3", "PC4", "PC6", "PC7"]},
              r"mcu.segment_pins: mcu.target pfs154 drives no 7-segment display \(allowed: \[\]")]
    for change, msg in cases:
        with pytest.raises(config.ConfigError, match=msg) as e:
            tiny(**{**PFS154, **change})
        assert len(str(e.value).splitlines()) == 1       # one problem, one line: not also the multiplier rule
    with pytest.raises(config.ConfigError, match="mcu.target: unknown value 'pfs155'"):
        tiny(**{"mcu.target": "pfs155"})


def test_demo_image_count_is_the_most_that_fit():
    used = {}                           # n images -> room left: 100 units of room, 30 per image, 5 of padding
    def build(n):
        used["last"] = n
        return 100 - 30 * n - (5 if n > 1 else 0)
    assert demo_build(build, lambda x: x, 30, 10, 0, "cfg") == 100 - 90 - 5 and used["last"] == 3
    assert demo_build(build, lambda x: x, 30, 2, 0, "cfg") == 100 - 60 - 5     # capped by the test set
    assert demo_build(lambda n: 25 - 30 * n - 5 * (n > 1), lambda x: x, 30, 10, 0, "cfg") == -5  # one: its gate
    assert demo_build(lambda n: 62 - 30 * n - 5 * (n > 1), lambda x: x, 30, 10, 0, "cfg") == 32  # two: one
    with pytest.raises(sim.PadaukError, match="cfg: mcu.demo_images: 11 requested, the test set has 10"):
        demo_build(build, lambda x: x, 30, 10, 11, "cfg", sim.PadaukError)


def test_flash_without_easypdkprog_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FlashError) as e:
        pipeline_flash.check_setup("pfs154")
    msg = str(e.value)
    assert "\n" not in msg and "easypdkprog not found" in msg and "neither Debian nor PyPI" in msg
    assert "github.com/free-pdk/easy-pdk-programmer-software" in msg


def test_flash_writes_the_ihx_with_easypdkprog(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "easypdkprog"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(fake.parent))
    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "firmware.ihx").write_text(":00000001FF\n")
    (fw / "summary.json").write_text('{"target": "pms150c"}')
    assert pipeline_flash.flash(fw).strip() == f"-n PMS150C write {fw / 'firmware.ihx'}"


# ---- the chain ----------------------------------------------------------------------------------------------

@pytest.mark.mnist
@pytest.mark.sdcc
@pytest.mark.spdk
def test_pfs154_chain_equals_the_c_engine(tiny_pipeline):
    plan = tiny_pipeline("emulate", tiny(**PFS154))
    fw, emu = summary(entry(plan, "firmware")), summary(entry(plan, "emulate"))
    # as many 64-word images as fit: one more would not
    assert fw["images"] > 1 and fw["rom_words"] <= 2048 < fw["rom_words"] + fw["image_words"]
    assert fw["ram_used"] <= fw["ram_limit"] == 128 and (entry(plan, "firmware") / "firmware.ihx").is_file()
    assert emu["predictions_match"] and emu["images"] == fw["images"]
    assert 1000 < emu["ticks"]["min"] <= emu["ticks"]["mean"] <= emu["ticks"]["max"]
    assert emu["ms_per_inference"] == round(emu["ticks"]["mean"] / 8000, 3)
    assert emu["ram_used"] <= 128 and 0 <= emu["accuracy"] <= 1


@pytest.mark.mnist
@pytest.mark.sdcc
@pytest.mark.spdk
def test_a_difference_from_the_c_engine_fails_with_a_table(tiny_pipeline, monkeypatch):
    plan = tiny_pipeline("firmware", tiny(**PFS154, **{"mcu.demo_images": 3}))
    real, runs = sim.run, []

    def one_logit_off(b, n):           # in the firmware's own run; the rebuilds with images 3 to 15 agree
        r = real(b, n)
        if not runs:
            r.logits[1, 4] += 1
        runs.append(b.n_images)
        return r
    monkeypatch.setattr(sim, "run", one_logit_off)
    plan.redo = {"emulate"}
    failed = plan.run("emulate")
    assert failed is not None and runs == [3] * 6      # images 0-2 embedded, then 3-17 rebuilt in threes
    msg = str(failed)
    assert "1 of 18 images differ from the C engine" in msg and re.search(r"^ +1 +\d +\d +\d +\[", msg, re.M)


@pytest.mark.mnist
@pytest.mark.sdcc
def test_oversized_model_fails_the_gate_with_its_table(tiny_pipeline):
    # tiny.yaml 96 units wide: their int8 outputs and fc2's 16 take 112 of the 128 B, and the engine the rest
    plan = tiny_pipeline("export", tiny(**{**PFS154, "model.widths": [96, 16]}))
    failed = plan.run("firmware")
    assert failed is not None
    msg = str(failed)
    assert re.search(r"does not fit \((ROM words \d+ > 2048 and )?RAM bytes \d+ > 128\)", msg)
    assert re.search(r"bmp_ram: activations 96 \+ 16 B +112", msg) and re.search(r"RAM bytes +total +\d+ +128", msg)
    assert "quant.scaling: per_tensor" in msg and "model.widths" in msg
    many = tiny(**PFS154, **{"mcu.demo_images": 40})     # 40 images of 64 words: past 2,048 ROM words
    failed = tiny_pipeline("export", many).run("firmware")
    assert failed is not None and re.search(r"ROM words +40 test images of 64 bytes +2560", str(failed))
