"""Stage bodies for store tests: each writes a file derived from its config and inputs.

FAKE_LOG (env) names a file that gets one line per execution; FAKE_FAIL names a stage that raises
halfway (after writing a partial output), FAKE_INTERRUPT one that gets Ctrl-C there; FAKE_SLEEP makes a
stage slow (for lock and kill tests).
"""
import os
import time


def run(ctx) -> dict:
    name = ctx.stage.name
    if os.environ.get("FAKE_LOG"):
        with open(os.environ["FAKE_LOG"], "a") as f:
            f.write(f"{name} {os.getpid()}\n")
    parts = [f"{k}={ctx.cfg[k]}" for k in ctx.stage.keys]
    parts += [(ctx.input(i) / "out.txt").read_text() for i in ctx.stage.inputs]
    (ctx.out / "out.txt").write_text(f"{name}({';'.join(parts)})")
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if os.environ.get("FAKE_FAIL") == name:
        raise RuntimeError(f"{name} failed halfway")
    if os.environ.get("FAKE_INTERRUPT") == name:
        raise KeyboardInterrupt
    return {"parts": len(parts)}
