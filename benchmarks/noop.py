"""Time a no-op run of the whole graph: `./run python benchmarks/noop.py [cfg=configs/NAME.yaml]`.

Builds the graph once if needed, then times `doit` over every stage when everything is up to date
(config load, key derivation from sources, store verification, doit bookkeeping). Goal: under 1 s.
"""
import statistics
import subprocess
import sys
import time

from pipeline.graph import STAGES

cfg = next((a for a in sys.argv[1:] if a.startswith("cfg=")), "cfg=configs/default.yaml")
tasks = [s.name for s in STAGES]
cmd = [sys.executable, "-m", "doit", cfg, *tasks]
print("building once if needed:", " ".join(cmd[1:]), flush=True)
subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
times = []
for _ in range(5):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    times.append(time.perf_counter() - t0)
    assert "stored" not in r.stdout, "graph was not up to date:\n" + r.stdout
print(f"no-op run of {len(tasks)} stages ({', '.join(tasks)}): median {statistics.median(times):.3f} s, "
      f"min {min(times):.3f} s over {len(times)} runs (goal < 1 s)")
