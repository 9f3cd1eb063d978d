"""Seconds per training epoch: `./run python benchmarks/train_speed.py [--epochs 2] [--presets default cnn64]`.

Runs the train stage's own epoch code (augmentation of a fresh copy, every optimizer step, the
integer-path evaluation on 10,000 test images) on the real data, with each preset's settings, and
prints seconds per epoch and training samples per second. Needs the `data` stage built for 16x16
(`./run doit data`). BitNetMCU's figures on this machine, for comparison: about 37 s per epoch for
FC 64/64/64 4bitsym with augmentation (120k samples) and about 125 s for its CNN-64.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from pipeline import config
from pipeline.graph import Plan
from pipeline.models import build_model
from pipeline.spec import model_spec
from pipeline.store import Store
from pipeline.train import epoch_images, evaluate, train_epoch

BITNETMCU_S_PER_EPOCH = {"default": 37.0, "cnn64": 125.0}

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--presets", nargs="+", default=["default", "cnn64"])
args = ap.parse_args()


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass


for preset in args.presets:
    cfg = config.load(f"configs/{preset}.yaml")
    plan = Plan.make(cfg, Store("artifacts"))
    data = Store("artifacts").verify("data", plan.keys["data"], "./run doit cfg=configs/%s.yaml data" % preset)
    clean = torch.from_numpy(np.load(data / "train_images.npy")).unsqueeze(1)
    raw = torch.from_numpy(np.load(data / "train_raw.npy"))
    labels = torch.from_numpy(np.load(data / "train_labels.npy")).long()
    test_x = torch.from_numpy(np.load(data / "test_images.npy")).unsqueeze(1)
    test_y = torch.from_numpy(np.load(data / "test_labels.npy")).long()
    torch.manual_seed(0)
    model = build_model(model_spec(cfg))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["train.lr"], fused=True)
    copies = 1 + (cfg["train.aug_copies"] if cfg["train.augment"] else 0)
    times = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.update_clipping()
        x = epoch_images(cfg, epoch, clean, raw)
        train_epoch(cfg, model, opt, epoch, x, labels.repeat(copies), _NoBar())
        model.update_clipping()
        evaluate(model, test_x, test_y)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    ref = BITNETMCU_S_PER_EPOCH.get(preset)
    vs = f", {ref / s:.1f}x faster than BitNetMCU's ~{ref:.0f} s" if ref else ""
    print(f"{preset}: {s:.2f} s per epoch (median of {len(times)}), {len(x) / s:,.0f} samples/s, "
          f"{len(x):,} samples per epoch{vs}", flush=True)
