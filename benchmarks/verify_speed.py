"""Time the 10,000-image verification per engine: `./run python benchmarks/verify_speed.py [cfg=...]...`.

For each config (default: configs/default.yaml and configs/cnn64.yaml) whose train, export and library
entries exist, times PyTorch int-eval, numba and the C library over all test images (after one warm-up
call each, so JIT compilation and library loading are not counted). Goal: numba and C under 2 s for FC.
"""
import sys
import time

from pipeline import config
from pipeline.graph import Plan
from pipeline.stages.data import mnist_test
from pipeline.store import Store
from pipeline.verify import engines

cfgs = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("cfg=")] or ["configs/default.yaml",
                                                                               "configs/cnn64.yaml"]
store = Store("artifacts")
for path in cfgs:
    plan = Plan.make(config.load(path), store)
    missing = [s for s in ("data", "train", "export", "library") if not store.has(s, plan.keys[s])]
    if missing:
        print(f"{path}: skipped, not built yet ({', '.join(missing)}); run ./run doit cfg={path} library")
        continue
    entry = {s: store.verify(s, plan.keys[s]) for s in ("data", "train", "export", "library")}
    pixels = mnist_test(entry["data"])[0]
    line = []
    for name, fn in engines(entry["train"], entry["export"], entry["library"]).items():
        fn(pixels[:16])
        t0 = time.perf_counter()
        fn(pixels)
        line.append(f"{name} {time.perf_counter() - t0:.2f} s")
    print(f"{path}: {len(pixels)} images, every layer traced: " + ", ".join(line))
