"""Seconds per training epoch, side by side with BitNetMCU:
`./run python benchmarks/train_speed.py [--epochs 2] [--presets default cnn64] [--bitnetmcu DIR]`.

Runs the train stage's own epoch code (augmentation of a fresh copy, every optimizer step, the
integer-path evaluation on 10,000 test images) on the real data, with each preset's settings, and
prints seconds per epoch and training samples per second. Needs the `data` stage built for 16x16
(`./run doit data`). With `--bitnetmcu DIR` (a checkout of cpldcpu/BitNetMCU) it then runs
BitNetMCU's own training.py for the same network, epochs and samples per epoch
(benchmarks/bitnetmcu_train.py) and prints the ratio measured in this run.
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
from bitnetmcu_train import PARAMS, check_checkout, seconds_per_epoch

from contract.spec import model_spec
from pipeline import config
from pipeline.graph import Plan
from pipeline.models import build_model
from pipeline.stages.data import mnist_test, mnist_train
from pipeline.store import Store
from pipeline.train import epoch_images, evaluate, make_optimizer, make_step, train_epoch

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--presets", nargs="+", default=["default", "cnn64"])
ap.add_argument("--bitnetmcu", type=Path, help="a BitNetMCU checkout: time its training.py side by side")
args = ap.parse_args()
checkout = check_checkout(args.bitnetmcu) if args.bitnetmcu else None


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass


for preset in args.presets:
    # a training run is one model per process: drop the previous preset's compiled graphs, whose shapes would
    # otherwise use up torch.compile's recompile limit and leave a later preset running eagerly (slower)
    torch._dynamo.reset()
    cfg = config.load(f"configs/{preset}.yaml")
    plan = Plan.make(cfg, Store("artifacts"))
    data = Store("artifacts").verify("data", plan.keys["data"], "./run doit cfg=configs/%s.yaml data" % preset)
    train_images, train_raw, train_labels = mnist_train(data)
    test_images, test_labels = mnist_test(data)
    clean, raw, labels = torch.from_numpy(train_images).unsqueeze(1), torch.from_numpy(train_raw), \
        torch.from_numpy(train_labels)
    test_x, test_y = torch.from_numpy(test_images).unsqueeze(1), torch.from_numpy(test_labels)
    torch.manual_seed(0)
    model = build_model(model_spec(cfg))
    opt = make_optimizer(cfg, model)
    copies = 1 + (cfg["train.aug_copies"] if cfg["train.augment"] else 0)
    step = make_step(cfg, model)
    t0 = time.perf_counter()
    bs = cfg["train.batch_size"]
    _, loss = step(clean[:bs], labels[:bs])   # compile (when on) before the clock starts; no update
    loss.backward()
    opt.zero_grad(set_to_none=True)
    print(f"{preset}: first step (includes torch.compile when train.compile is on) {time.perf_counter() - t0:.1f} s",
          flush=True)
    times = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.update_clipping()
        x = epoch_images(cfg, epoch, clean, raw)
        train_epoch(cfg, model, opt, epoch, x, labels.repeat(copies), _NoBar(), step)
        model.update_clipping()
        evaluate(model, test_x, test_y, int_eval=False)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    print(f"{preset}: {s:.2f} s per epoch (median of {len(times)}), {len(x) / s:,.0f} samples/s, "
          f"{len(x):,} samples per epoch", flush=True)
    if checkout and preset in PARAMS:
        ref = statistics.median(seconds_per_epoch(checkout, preset, args.epochs, cfg["train.batch_size"]))
        print(f"{preset}: BitNetMCU {ref:.2f} s per epoch (median of {args.epochs}), {len(x) / ref:,.0f} "
              f"samples/s, batch {cfg['train.batch_size']}: bitmcu is {ref / s:.1f}x faster", flush=True)
    elif checkout:
        print(f"{preset}: no BitNetMCU counterpart (compared presets: {', '.join(PARAMS)})")
