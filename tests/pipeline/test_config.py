import subprocess
import sys

import pytest

from pipeline import config
from pipeline.config import SCHEMA, ConfigError

from tests.conftest import ROOT


def _load(tmp_path, text):
    p = tmp_path / "preset.yaml"
    p.write_text(text)
    return config.load(p)


def _error(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    return str(e.value)


def test_presets_load_and_name_runs():
    from pipeline.search import is_search
    from pipeline.sweep import is_sweep
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        if is_sweep(p) or is_search(p):  # tests/pipeline/test_sweep.py and test_search.py cover those
            continue
        cfg = config.load(p)
        assert cfg.name == p.stem
        assert set(cfg.values) == set(SCHEMA)


def test_defaults_fill_missing_keys(tmp_path):
    cfg = _load(tmp_path, "data:\n  image_size: 8\n")
    assert cfg["data.image_size"] == 8
    assert cfg["data.allow_download"] is SCHEMA["data.allow_download"].default


def test_unknown_key_names_closest(tmp_path):
    msg = _error(tmp_path, "data:\n  image_sise: 16\n")
    assert "preset.yaml: data.image_sise: unknown key (did you mean data.image_size?)" in msg


def test_leaf_in_wrong_section_names_right_one(tmp_path):
    msg = _error(tmp_path, "misc:\n  allow_download: true\n")
    assert "misc.allow_download: unknown key (did you mean data.allow_download?)" in msg


def test_wrong_type(tmp_path):
    msg = _error(tmp_path, "data:\n  image_size: sixteen\n")
    assert "data.image_size: must be an integer; got 'sixteen' (allowed: " in msg


def test_out_of_range(tmp_path):
    msg = _error(tmp_path, "data:\n  image_size: 99\n")
    assert "data.image_size: 99 is out of range (allowed: an integer from 8 to 28)" in msg


def test_bool_is_not_an_int(tmp_path):
    assert "must be an integer" in _error(tmp_path, "data:\n  image_size: true\n")
    assert "must be true or false" in _error(tmp_path, "data:\n  allow_download: 1\n")


def test_all_problems_reported_at_once(tmp_path):
    msg = _error(tmp_path, "data:\n  image_size: 99\n  allow_download: 3\n")
    assert len(msg.splitlines()) == 2


def test_bad_yaml_and_bad_top_level(tmp_path):
    assert "not valid YAML" in _error(tmp_path, "data: [1, 2\n")
    assert "top level must be a mapping" in _error(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "missing.yaml")


def test_doit_reports_config_error_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  image_sise: 16\n")
    r = subprocess.run([sys.executable, "-m", "doit", f"cfg={bad}", "list"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "data.image_sise: unknown key (did you mean data.image_size?)" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_bad_quantizer_name(tmp_path):
    msg = _error(tmp_path, "quant:\n  formats: 5bit\n")
    assert "quant.formats: unknown value '5bit' (allowed: binary, binarybalanced, ternary" in msg


def test_layer_that_would_overflow_the_accumulator_is_rejected(tmp_path):
    msg = _error(tmp_path, "model:\n  widths: [2048, 64]\nquant:\n  formats: 8bit\n  scaling: per_output\n")
    assert "model.widths: layer fc2 has 2048 inputs" in msg and "int32 accumulator limit" in msg
    assert "(allowed: n_in <= 1024 for 8bit per_output)" in msg


def test_unsupported_combinations(tmp_path):
    assert "data.image_size: 8 leaves no pixels after the conv stack" in _error(
        tmp_path, "data:\n  image_size: 8\nmodel:\n  kind: cnn\n  widths: [32]\n")
    assert "quant.formats: 2 names for 4 weight layers" in _error(
        tmp_path, "quant:\n  formats: [4bitsym, 2bitsym]\n")
    assert "model.widths: [64] has 1 entries" in _error(tmp_path, "model:\n  widths: [64]\n")
    assert "train.scale_min: 1.2 is above train.scale_max 1.1" in _error(tmp_path, "train:\n  scale_min: 1.2\n")
    assert "prune.keep: 100 is out of range" in _error(tmp_path, "prune:\n  keep: 100\n")


def test_multiplier_format_refused_for_ch32v003_before_training():
    with pytest.raises(config.ConfigError, match=r"quant.formats: 8bit need a multiply instruction, which "
                                                 r"mcu.target ch32v003 lacks \(allowed: .*; or mcu.target: ch32v002, ch32v006\)"):
        config.load(ROOT / 'configs' / 'tiny.yaml').replace(**{"quant.formats": ["8bit"]})
    assert config.load(ROOT / 'configs' / 'tiny.yaml').replace(**{"quant.formats": ["8bit"], "mcu.target": "ch32v002"})


@pytest.mark.parametrize("extra, message", [
    ("  batch_size: 4096\n  train_limit: 1024\n",
     "train.batch_size: 4096 is larger than the 2048 samples of an epoch (1024 images x 2 copies)"),
    ("  batch_size: 128\n  train_limit: 5\n",
     "train.batch_size: 128 is larger than the 10 samples of an epoch (5 images x 2 copies)"),
    ("  train_limit: 56000\n", "train.train_limit: 56000 is more than the 55000 training images left after the "
     "validation split (train.val_images 5000) (allowed: 0 to 55000)"),
    ("  lr: 5e-3\n", "train.lr: must be a number; got the string '5e-3': YAML reads an exponent without a "
     "decimal point as text, write 5.0e-3"),
])
def test_training_for_nothing_is_refused(tmp_path, extra, message):
    assert message in _error(tmp_path, "train:\n  epochs: 1\n" + extra)


def test_pruning_after_the_last_epoch_is_refused(tmp_path):
    msg = _error(tmp_path, "train: {epochs: 5}\nprune: {keep: 8, epoch: 9}\n")
    assert "prune.epoch: 9 is after the last epoch (train.epochs 5), so pruning would never happen" in msg
    assert _load(tmp_path, "train: {epochs: 5}\nprune: {keep: 0, epoch: 9}\n")["prune.epoch"] == 9


def test_choosing_the_epoch_on_validation_needs_a_validation_split(tmp_path):
    msg = _error(tmp_path, "train: {select: best_val, val_images: 0}\n")
    assert "train.select: best_val chooses the epoch on the validation split, but train.val_images is 0" in msg
    assert _load(tmp_path, "train: {select: best_val}\n")["train.select"] == "best_val"


def test_empty_file_and_empty_section(tmp_path):
    assert "the file is empty (no sections)" in _error(tmp_path, "# nothing here\n")
    cfg = _load(tmp_path, "data:\n  image_size: 8\nmcu:\n  # target: ch32v002\n")
    assert cfg["mcu.target"] == SCHEMA["mcu.target"].default


def test_non_utf8_file_names_the_byte(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("# caf\xe9\ndata: {image_size: 8}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: byte 0xe9 at offset 5 is not UTF-8 text"):
        config.load(p)


def _bad_values(key):
    """Values each key must refuse: the wrong type, and just outside its range or choices."""
    k = SCHEMA[key]
    if k.kind == "bool":
        return [2, "maybe"]
    if k.kind == "path":
        return [5, ""]
    if k.kind in ("int", "float"):
        out = ["x", [1]] + ([1.5] if k.kind == "int" else ["5e-3"])
        out += [v for v in ((k.lo - 1) if k.lo is not None else None, (k.hi + 1) if k.hi is not None else None)
                if v is not None]
        return out
    if k.kind == "str":
        return [3] + (["nosuch"] if k.choices else [])
    if k.kind == "ints":
        return ["x", [], [0.5], [1] * (k.max_len + 1)]
    return [7, ["nosuch"] if k.choices else [1], ["a"] * (k.max_len + 1)]   # strs


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_every_bad_value_of_every_key_is_a_message_naming_file_and_key(tmp_path, key):
    import yaml
    section, leaf = key.split(".", 1)
    for v in _bad_values(key):
        p = tmp_path / "bad.yaml"
        p.write_text(yaml.safe_dump({section: {leaf: v}}))
        with pytest.raises(ConfigError) as e:       # never another exception: the CLI prints these as one line
            config.load(p)
        assert str(e.value).startswith(f"{p}: {key}: ") and "(allowed: " in str(e.value), (v, str(e.value))
