"""Time BitNetMCU's own training script on this machine, for a side-by-side speed comparison.

Nothing of BitNetMCU is part of bitmcu (it is GPL-3.0): the user points `--bitnetmcu` at their own
checkout (git clone https://github.com/cpldcpu/BitNetMCU). Its training.py runs unmodified in a
scratch copy, on the MNIST files bitmcu already found and verified (gunzipped where torchvision
looks for them, so it downloads nothing), with a parameter file written here. Two modules it only
uses for logging (torch.utils.tensorboard, torchsummary) are replaced by no-op stand-ins when they
are not installed; they write TensorBoard logs and a layer table, which cost nothing measurable.
Its own per-epoch "Time[s]:" figure (training, test pass, activation count) is what is reported.
"""
from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline.data import FILES, locate, read_verified

# The two presets compared: bitmcu's preset name -> BitNetMCU parameters of the same network.
PARAMS = {
    "default": dict(model="FCMNIST", QuantType="4bitsym", network_width1=64, network_width2=64,
                    network_width3=64),
    "cnn64": dict(model="CNNMNIST", QuantType="4bitsym", cnn_width=64, network_width1=96,
                  network_width2=64, network_width3=0),
}
COMMON = dict(dataset="MNIST", NormType="RMS", WScale="PerTensor", maxw_algo="octav", maxw_update_until_epoch=60,
              maxw_quantscale=0.25, scheduler="Cosine", learning_rate=0.001, augmentation=True,
              rotation1=10, rotation2=10, elastictransformprobability=0.0, lambda_l1=0.0005, prune_epoch=-1,
              prune_groupstoprune=32, prune_totalgroups=96, runtag="bench")

# Run inside the child: stand-ins for logging-only imports that are missing, then the script itself.
_LAUNCH = """
import importlib.util, runpy, sys, types
if importlib.util.find_spec("tensorboard") is None:
    tb = types.ModuleType("torch.utils.tensorboard")
    class SummaryWriter:
        def __init__(self, *a, **k): pass
        def __getattr__(self, name): return lambda *a, **k: None
    tb.SummaryWriter = SummaryWriter
    sys.modules["torch.utils.tensorboard"] = tb
if importlib.util.find_spec("torchsummary") is None:
    ts = types.ModuleType("torchsummary"); ts.summary = lambda *a, **k: None
    sys.modules["torchsummary"] = ts
sys.argv = ["training.py", "--params", "bench.yaml"]
runpy.run_path("training.py", run_name="__main__")
"""


def check_checkout(path: Path) -> Path:
    need = ["training.py", "models.py", "BitNetMCU.py"]
    missing = [n for n in need if not (path / n).is_file()]
    if missing:
        raise SystemExit(f"--bitnetmcu {path}: not a BitNetMCU checkout (missing {', '.join(missing)}); "
                         "clone https://github.com/cpldcpu/BitNetMCU and pass its folder")
    return path


def seconds_per_epoch(checkout: Path, preset: str, epochs: int, batch_size: int, root: Path = Path(".")) -> list[float]:
    """Run BitNetMCU's training for `epochs` epochs of the preset's network at our batch size; its per-epoch times."""
    _, found = locate(None, root.resolve(), allow_download=False)
    with tempfile.TemporaryDirectory(prefix="bitnetmcu-bench-") as tmp:
        work = Path(tmp) / "BitNetMCU"
        shutil.copytree(checkout, work, ignore=shutil.ignore_patterns(".git", "modeldata", "runs", "data"))
        (work / "modeldata").mkdir()
        raw = work / "data" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for key, (base, md5, shape) in FILES.items():
            p = found[key]
            read_verified(p, md5, shape)          # the data stage's checksum check, before BitNetMCU sees it
            (raw / base).write_bytes(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes())
        params = {**COMMON, **PARAMS[preset], "num_epochs": epochs, "batch_size": batch_size}
        (work / "bench.yaml").write_text(yaml.safe_dump(params))
        times: list[float] = []
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCH], cwd=work, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in proc.stdout:  # type: ignore[union-attr]
            tail = (tail + [line])[-20:]
            m = re.search(r"Epoch \[(\d+)/\d+\].*Time\[s\]: ([0-9.]+)", line)
            if m:
                times.append(float(m.group(2)))
                print(f"  BitNetMCU {preset} epoch {m.group(1)}: {m.group(2)} s", flush=True)
        if proc.wait() != 0 or not times:
            raise SystemExit(f"BitNetMCU's training.py failed for {preset} (exit {proc.returncode}); "
                             "its last lines:\n" + "".join(tail))
        return times
