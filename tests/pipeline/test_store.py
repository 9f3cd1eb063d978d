"""Store semantics as properties of the declarations: what runs when a key changes, crashes, damage, locks."""
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from pipeline import config
from pipeline.config import SCHEMA
from pipeline.graph import STAGES, Plan
from pipeline.store import Store, StoreError, check_writable, write_problem

from tests.conftest import ROOT

# The real graph's shape (keys, inputs) with bodies that only record that they ran.
FAKE = tuple(replace(s, module="tests.fake_stages", extra_sources=(), variants=(), outputs=("out.txt",))
             for s in STAGES)
PRESET_KEYS = {p.key for s in STAGES for p in s.preset_inputs}   # name another preset (train.teacher)
A_PRESET = str(ROOT / "configs" / "default.yaml")


def declaring(key, stages=STAGES):
    """The stages whose key the config key enters: as a declared key, or as a preset input."""
    return {s.name for s in stages if key in s.keys or key in {p.key for p in s.preset_inputs}}


def alternatives(key):
    """Valid values different from the default, simplest first."""
    k = SCHEMA[key]
    d = k.default
    if k.choices:
        return [c for c in k.choices if c != d]
    if k.kind == "bool":
        return [not d]
    if k.kind == "int":
        mid = (k.lo + k.hi) // 2 if k.lo is not None and k.hi is not None else None  # when the ends break a rule
        return [v for v in (d + 1, d - 1, k.lo, k.hi, mid) if v is not None and v != d
                and (k.lo is None or v >= k.lo) and (k.hi is None or v <= k.hi)]
    if k.kind == "float":
        return [v for v in (d * 0.5, d * 2, d + 1, k.lo, k.hi) if v is not None and v != d
                and (k.lo is None or v >= k.lo) and (k.hi is None or v <= k.hi)]
    if key in PRESET_KEYS:
        return [A_PRESET]
    if k.kind == "path":  # an existing file: a path key in a stage key stands for its content
        return [__file__]
    if k.kind == "ints":
        return [d[:-1] + [d[-1] + 1], d + [d[-1]], d[:-1]]
    if k.kind == "strs":
        return []  # handled by the key's own choices in its validating rule
    return [d + "x"]


def changed_config(key):
    """The default config, and one with a valid value of `key` that means something else on this machine (a key
    that counts only with another set gets that one set on both sides, and model.mix a cnn)."""
    partner = SCHEMA[key].only_with
    base = config.from_values({partner: A_PRESET} if partner else {})
    if key == "model.mix":                                 # a cnn's key: an fc model refuses it
        base = base.replace(**{"model.kind": "cnn"})
    for v in alternatives(key):
        try:
            changed = base.replace(**{key: v})
        except config.ConfigError:
            continue
        if changed.resolved(key) != base.resolved(key):   # e.g. train.device cpu is what auto means here
            return base, changed
    pytest.fail(f"no valid alternative value found for {key}; extend alternatives()")


def execute(plan: Plan) -> list[str]:
    """What doit does: each stage in order, run unless up to date. Returns the stages that ran."""
    ran = []
    for s in plan.stages:
        if not plan.up_to_date(s.name):
            assert plan.run(s.name) is None, s.name
            ran.append(s.name)
    return ran


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_changing_a_key_changes_exactly_the_declaring_stages_and_downstream(key):
    base, changed = changed_config(key)
    store = Store("/nonexistent")
    a, b = Plan.make(base, store), Plan.make(changed, store)
    expected = a.downstream(declaring(key))
    assert {n for n in a.keys if a.keys[n] != b.keys[n]} == expected
    if SCHEMA[key].runtime:
        assert not expected


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_changing_a_key_reruns_exactly_those_stages(key, tmp_path):
    base, changed = changed_config(key)
    store = Store(tmp_path)
    first = Plan.make(base, store, FAKE)
    assert execute(first) == [s.name for s in FAKE]
    second = Plan.make(changed, store, FAKE)
    expected = second.downstream(declaring(key, FAKE))
    assert set(execute(second)) == expected
    assert execute(Plan.make(base, store, FAKE)) == []  # A -> B -> A: nothing on the return


def test_code_change_changes_key():
    from pipeline.stage import stage_key
    cfg = config.from_values({})
    extra = ROOT / "tests" / "_extra_source.txt"
    stage = replace(FAKE[0], extra_sources=("tests/_extra_source.txt",))
    try:
        extra.write_text("v1")
        k1 = stage_key(stage, cfg, {})
        extra.write_text("v2")
        k2 = stage_key(stage, cfg, {})
    finally:
        extra.unlink()
    assert len({k1, k2, stage_key(FAKE[0], cfg, {})}) == 3


@pytest.mark.parametrize("key", sorted(k for k in SCHEMA if SCHEMA[k].kind == "path"
                                        and any(k in s.keys for s in STAGES)))
def test_a_path_key_stands_for_its_file_content(key, tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    one, two = (b"train: {epochs: 3}\n", b"train: {epochs: 4}\n") if key in PRESET_KEYS else (b"one", b"two")
    a.write_bytes(one)
    b.write_bytes(one)
    base = config.from_values({})

    def keys(path):
        return Plan.make(base.replace(**{key: str(path)}), Store("/nonexistent")).keys

    first = keys(a)
    assert keys(b) == first  # same content elsewhere: nothing to rebuild
    a.write_bytes(two)
    changed = keys(a)
    plan = Plan.make(base, Store("/nonexistent"))
    assert {n for n in first if first[n] != changed[n]} == plan.downstream(declaring(key))
    with pytest.raises(config.ConfigError, match=f"{key}: {tmp_path / 'gone.bin'}: no such file"):
        keys(tmp_path / "gone.bin")


def test_source_files_follow_imports():
    from pipeline.stage import source_files
    files = {p.name for p in source_files("pipeline.data")}
    assert "data.py" in files and "config.py" not in files


def test_stage_raising_halfway_leaves_no_entry_and_reruns(tmp_path, monkeypatch):
    store = Store(tmp_path)
    plan = Plan.make(config.from_values({}), store, FAKE)
    name = FAKE[0].name
    monkeypatch.setenv("FAKE_FAIL", name)
    with pytest.raises(RuntimeError, match="failed halfway"):
        plan.run(name)
    assert not store.has(name, plan.keys[name])
    assert not any((tmp_path / "store" / ".tmp").iterdir())
    monkeypatch.delenv("FAKE_FAIL")
    assert execute(plan)[0] == name


def test_summary_and_manifest_written(tmp_path):
    store = Store(tmp_path)
    plan = Plan.make(config.from_values({}), store, FAKE)
    execute(plan)
    for s in FAKE:
        link = tmp_path / "runs" / "inline" / s.name
        summary = json.loads((link / "summary.json").read_text())
        assert summary["key"] == plan.keys[s.name] and summary["stage"] == s.name
        assert "summary.json" in json.loads((link / "manifest.json").read_text())["files"]


def test_corrupted_file_is_detected(tmp_path, capsys):
    store = Store(tmp_path)
    plan = Plan.make(config.from_values({}), store, FAKE)
    execute(plan)
    name = FAKE[0].name
    damaged = store.path(name, plan.keys[name]) / "out.txt"
    damaged.write_text("tampered")
    with pytest.raises(StoreError, match=f"{damaged}: content does not match its manifest"):
        store.verify(name, plan.keys[name])
    assert plan.up_to_date(name) is False
    failed = plan.run(name)  # doit's action: a clean failure naming the file and the fix
    assert failed is not None and "redo=" in str(failed) and str(damaged) in str(failed)
    assert damaged.read_text() == "tampered"  # nothing silently replaced


def test_missing_and_extra_files_are_detected(tmp_path):
    store = Store(tmp_path)
    plan = Plan.make(config.from_values({}), store, FAKE)
    execute(plan)
    entry = store.path(FAKE[0].name, plan.keys[FAKE[0].name])
    (entry / "stray.bin").write_bytes(b"x")
    with pytest.raises(StoreError, match="not in the manifest: stray.bin"):
        store.verify(FAKE[0].name, plan.keys[FAKE[0].name])
    (entry / "stray.bin").unlink()
    (entry / "out.txt").unlink()
    with pytest.raises(StoreError, match="missing"):
        store.verify(FAKE[0].name, plan.keys[FAKE[0].name])


def _build_in_process(root, log):
    os.environ["FAKE_LOG"] = str(log)
    os.environ["FAKE_SLEEP"] = "0.5"
    plan = Plan.make(config.from_values({}), Store(root), FAKE[:1])
    plan.run(FAKE[0].name)


def test_two_processes_build_an_entry_once(tmp_path):
    log = tmp_path / "log.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path / "a", log)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log.read_text().splitlines()) == 1
    plan = Plan.make(config.from_values({}), Store(tmp_path / "a"), FAKE[:1])
    Store(tmp_path / "a").verify(FAKE[0].name, plan.keys[FAKE[0].name])


def test_the_write_check_leaves_other_processes_probes_alone(tmp_path):
    # doit's start-up check runs in every process; one that removed a shared probe name made another, started
    # in the same second, fail with "the store cannot be written (No such file or directory)"
    root = tmp_path / "new" / "artifacts"
    check_writable(root)                       # creates the folder and leaves nothing in it
    assert root.is_dir() and list(root.iterdir()) == []
    others = [root / ".write-test", root / ".write-test-x"]
    for f in others:                           # another process's probe, mid-check
        f.write_text("")
    check_writable(root)
    assert all(f.is_file() for f in others)


def test_a_full_disk_at_start_up_says_to_free_space(tmp_path, monkeypatch):
    import errno
    import tempfile

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert write_problem(tmp_path / "ok") is None
    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    msg = write_problem(tmp_path / "store")
    assert msg.startswith(f"{tmp_path / 'store'}: the store cannot be written (No space left on device); free some")
    assert "doit gc" in msg and "BITMCU_ARTIFACTS" not in msg


def test_killed_build_leaves_no_entry(tmp_path):
    log = tmp_path / "log.txt"
    code = ("import sys; sys.path.insert(0, %r); from tests.pipeline.test_store import _build_in_process; "
            "_build_in_process(%r, %r)" % (str(ROOT), str(tmp_path / "a"), str(log)))
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "FAKE_SLEEP": "30"})
    deadline = time.time() + 30
    while not (log.exists() and log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    assert log.exists() and log.read_text(), "the build never started, so killing it proves nothing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    store = Store(tmp_path / "a")
    plan = Plan.make(config.from_values({}), store, FAKE[:1])
    assert not store.has(FAKE[0].name, plan.keys[FAKE[0].name])
    assert execute(plan) == [FAKE[0].name]  # the lock died with the process; the rebuild goes through


def test_gc_removes_only_unlinked_entries(tmp_path):
    store = Store(tmp_path)
    base = config.from_values({})
    other = base.replace(**{"data.image_size": 8})
    keep = Plan.make(base, store, FAKE)
    execute(keep)
    gone = Plan.make(other, store, FAKE)
    execute(gone)
    # Same run name: the links now point at `other`'s entries, so `base`'s are garbage.
    removed = store.gc()
    assert {p.name for p in removed} == {keep.keys[s.name] for s in FAKE}
    for s in FAKE:
        store.verify(s.name, gone.keys[s.name])


def test_a_variant_module_implements_the_stage_when_its_key_is_set(tmp_path):
    from pipeline.stage import code_hash, stage_key
    train = next(s for s in STAGES if s.name == "train")
    base = config.from_values({})
    ck = tmp_path / "x.pth"
    ck.write_bytes(b"checkpoint")
    imported = base.replace(**{"import.src": str(ck)})
    assert train.module_for(base) == "pipeline.train" and train.module_for(imported) == "pipeline.bitnetmcu"
    assert code_hash(train, "pipeline.train") != code_hash(train, "pipeline.bitnetmcu")
    # a key at null is left out of the key: declaring a new optional key kept every existing entry
    assert stage_key(train, base, {"data": "d"}) == stage_key(replace(train, keys=train.keys[:-1]), base, {"data": "d"})


def test_a_stage_writes_exactly_what_it_declares():
    stage = replace(FAKE[0], outputs=("out.txt", "figs/*.png"))
    stage.check_outputs(["out.txt", "figs/a.png"])
    with pytest.raises(RuntimeError, match=r"undeclared files \['extra.bin'\]"):
        stage.check_outputs(["out.txt", "extra.bin"])
    with pytest.raises(RuntimeError, match=r"did not write \['out.txt'\]"):
        stage.check_outputs(["figs/a.png"])


def test_an_entry_without_its_manifest_is_moved_aside_and_rebuilt(tmp_path, capsys):
    store = Store(tmp_path)
    plan = Plan.make(config.from_values({}), store, FAKE[:1])
    name, key = FAKE[0].name, plan.keys[FAKE[0].name]
    execute(plan)
    (store.path(name, key) / "manifest.json").unlink()
    assert not plan.up_to_date(name)
    assert plan.run(name) is None                      # was an OSError on the rename into place
    assert store.verify(name, key) and "had no manifest" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "store" / ".damaged").iterdir()][0].startswith(f"{name}-{key}-")
    assert any(p.name == ".damaged" or p.parent.name == ".damaged" for p in store.gc())


def test_redo_clears_the_scratch_of_an_interrupted_build(tmp_path):
    store = Store(tmp_path)
    plan = Plan.make(config.from_values({}), store, FAKE[:1])
    name, key = FAKE[0].name, plan.keys[FAKE[0].name]
    work = store.work_dir(name, key)
    work.mkdir(parents=True)
    (work / "checkpoint.pt").write_bytes(b"damaged")
    store.remove(name, key)
    assert not work.exists()


def test_ctrl_c_is_a_clean_failure_that_stores_nothing(tmp_path, monkeypatch, capsys):
    store = Store(tmp_path)
    plan = Plan.make(config.from_values({}), store, FAKE[:1])
    monkeypatch.setenv("FAKE_INTERRUPT", FAKE[0].name)
    failed = plan.run(FAKE[0].name)
    assert failed is not None and "interrupted: nothing of stage data was stored" in str(failed)
    assert not store.has(FAKE[0].name, plan.keys[FAKE[0].name])
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("error, shown", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    # numpy's tofile (np.save of a large array) says it without an errno
    (OSError("Not enough free space to write 47040000 bytes after offset 128"), "Not enough free space"),
])
def test_a_full_disk_is_a_message_and_leaves_no_entry(tmp_path, error, shown):
    store = Store(tmp_path)

    def fill(out, work):
        (out / "partial.bin").write_bytes(b"x")
        raise error
    with pytest.raises(StoreError, match=rf"data: cannot write to the store at .* \({shown}.*\); "
                                         r"free some space \(`doit gc`"):
        store.build("data", "k" * 24, fill)
    assert not store.has("data", "k" * 24) and not any((tmp_path / "store" / ".tmp").iterdir())


def test_a_store_that_cannot_be_written_is_named_before_anything_runs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {**os.environ, "BITMCU_ARTIFACTS": str(blocker / "store")}
    r = subprocess.run([sys.executable, "-m", "doit", "list"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and f"{blocker / 'store'}: the store cannot be written" in r.stderr
    assert "Traceback" not in r.stderr


def test_machine_dependent_keys_enter_the_store_key_as_what_they_mean_here():
    base = config.from_values({})
    train = next(s for s in STAGES if s.name == "train")
    key = Plan.make(base, Store("/nonexistent")).keys["train"]
    same = base.replace(**{"train.threads": os.cpu_count(), "train.device": "cuda" if config.cuda_present() else "cpu"})
    assert Plan.make(same, Store("/nonexistent")).keys["train"] == key     # 0 = the cores, auto = this machine's
    other = base.replace(**{"train.threads": os.cpu_count() + 1})
    assert Plan.make(other, Store("/nonexistent")).keys["train"] != key    # what the thread count changes: the key
    assert "train.threads" in train.keys and "train.device" in train.keys and not train.runtime_keys


def test_waiting_for_a_lock_says_so(tmp_path, capsys):
    import fcntl
    import threading

    from pipeline.store import _flock
    store = Store(tmp_path)
    done = []
    with _flock(tmp_path / "store" / ".locks" / f"data-{'k' * 24}", fcntl.LOCK_EX):   # another builder
        t = threading.Thread(target=lambda: done.append(store.build("data", "k" * 24, lambda out, work: {})))
        t.start()
        time.sleep(0.5)
        assert not done
    t.join(10)
    assert done and f"waiting for another doit building data-{'k' * 24}" in capsys.readouterr().out
