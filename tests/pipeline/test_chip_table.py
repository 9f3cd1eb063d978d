"""pipeline/chip_table.py on a store of fake runs: seeds fold into one row, a repeated training counts once, the
Pareto front and the pick are judged on validation, and the files are written."""
import json

from pipeline import chip_table

CFG = {"model.kind": "fc", "model.widths": [16, 16], "quant.formats": ["2bitsym"], "data.image_size": 8,
       "model.cnn_channels": 0, "train.epochs": 60, "train.threads": 1}


def _run(root, name, key, seed, test, val, flash, target="ch32v003", widths=(16, 16), cycles=None):
    stages = {"train": {"key": f"t{key}", "config": {**CFG, "model.widths": list(widths), "train.seed": seed},
                        "test_accuracy_int": test, "val_accuracy_int": val},
              "export": {"key": f"e{key}", "config": {"mcu.target": target}, "target": target, "flash_bytes": flash}}
    if cycles is not None:
        stages["firmware"] = {"key": f"f{key}", "config": {}, "flash_used": 9000, "ram_used": 900}
        stages["emulate"] = {"key": f"m{key}", "config": {}, "cycles": {"mean": cycles}}
    for stage, s in stages.items():
        (root / name / stage).mkdir(parents=True)
        (root / name / stage / "summary.json").write_text(json.dumps(s))


def test_seeds_fold_and_the_pick_is_judged_on_validation(tmp_path):
    runs = tmp_path / "runs"
    for seed, (test, val) in enumerate([(0.95, 0.94), (0.96, 0.95), (0.94, 0.93)]):
        _run(runs, f"small-{seed}", seed, seed, test, val, 1000, cycles=30000.0 if seed == 0 else None)
    _run(runs, "small-again", 1, 1, 0.96, 0.95, 1000)                   # seed 1's training under another name
    _run(runs, "wide-0", 9, 0, 0.99, 0.90, 2000, widths=(64, 64))       # best test, worst validation: not picked
    _run(runs, "big-0", 8, 0, 0.97, 0.96, 3000, widths=(32, 32))        # best validation but one seed
    _run(runs, "other-chip", 7, 0, 0.9, 0.9, 500, target="pfs154")
    for seed in range(3):                                               # ties small's validation, bigger, found first
        _run(runs, f"a-tie-{seed}", 20 + seed, seed, 0.97, [0.94, 0.95, 0.93][seed], 1500, widths=(24, 24))
    chips = chip_table.rows_by_chip(chip_table.collect(runs))
    assert set(chips) == {"ch32v003", "pfs154"}
    rows = {r["model"]: r for r in chips["ch32v003"]}
    small = rows["FC 16/16 2bitsym, 8x8, 60 ep"]
    assert small["seeds"] == [0, 1, 2] and small["tests"] == [95.0, 96.0, 94.0] and round(small["val_mean"], 6) == 94.0
    assert round(small["test_std"], 6) == 1.0 and small["cycles"] == 30000.0 and small["firmware_flash"] == 9000
    assert small["pick"] and not rows["FC 32/32 2bitsym, 8x8, 60 ep"]["pick"]     # needs 3 seeds
    assert not rows["FC 24/24 2bitsym, 8x8, 60 ep"]["pick"]                      # the tie goes to the smaller
    assert small["pareto"] and rows["FC 32/32 2bitsym, 8x8, 60 ep"]["pareto"]
    assert not rows["FC 64/64 2bitsym, 8x8, 60 ep"]["pareto"]        # 16x16 has more validation with less flash
    out = chip_table.write(chips, tmp_path / "chips")
    assert {p.name for p in out} == {"table.md", "results.csv", "pareto.png"}
    assert "| FC 16/16 2bitsym, 8x8, 60 ep | 95.00 / 96.00 / 94.00 | 95.00% ± 1.00 | 94.00 |" in \
        (tmp_path / "chips" / "ch32v003" / "table.md").read_text()


def test_cli_names_a_missing_runs_folder(tmp_path, capsys):
    assert chip_table.main(["--runs", str(tmp_path / "nothing")]) == 1
    assert "no such folder" in capsys.readouterr().err
