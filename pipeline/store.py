"""Content-addressed artifact store.

Layout under the root (default `artifacts/`):
  store/<stage>/<key>/         finished entries: outputs, summary.json, manifest.json
  store/.tmp/                  entries being built; renamed into place atomically when complete
  store/.work/<stage>-<key>/   scratch that survives a crash (training checkpoints), removed on success
  store/.locks/                per-entry build locks and the store-wide gc lock
  runs/<config name>/<stage>   symlinks to the entries the named config uses now

Concurrency: a builder holds the gc lock shared and its entry's lock exclusively, so two processes
never build one entry twice and `gc` never deletes what someone is building or about to link.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from contract.errors import UserError

MANIFEST = "manifest.json"
SUMMARY = "summary.json"


class StoreError(UserError):
    pass


_FULL_OR_READ_ONLY = {
    errno.ENOSPC: "free some space (`doit gc` removes entries no run uses) and run the same command again",
    errno.EDQUOT: "free some space (`doit gc` removes entries no run uses) and run the same command again",
    errno.EROFS: "point $BITMCU_ARTIFACTS at a writable folder",
    errno.EACCES: "point $BITMCU_ARTIFACTS at a folder you may write, or fix its permissions",
}


def _unwritable(e: OSError) -> str | None:
    """What to do about an error that says the store cannot be written (full, read-only), or None."""
    if e.errno in _FULL_OR_READ_ONLY:
        return _FULL_OR_READ_ONLY[e.errno]
    if e.errno is None and "free space" in str(e):  # numpy's tofile reports a full disk without an errno
        return _FULL_OR_READ_ONLY[errno.ENOSPC]
    return None


def write_problem(root: Path) -> str | None:
    """None when the store at root can be written (check_writable); else one line naming root, the error and
    what to do about it (on a full disk: free space, not move the store)."""
    try:
        check_writable(root)
    except OSError as e:
        remedy = _unwritable(e) or "point $BITMCU_ARTIFACTS at a writable folder"
        return f"{root}: the store cannot be written ({e.strerror or e}); {remedy}"
    return None


def check_writable(root: Path) -> None:
    """Create root if need be and prove a file can be made in it; raises OSError if not. The probe file has a
    name of its own (several doit processes may start at once, and one must not delete another's probe)."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=root, prefix=".write-test-"):
        pass


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:       # someone else holds it: say so, then wait
            what = "a gc of the store" if path.name == "gc" else f"another doit building {path.name}"
            print(f"waiting for {what} (lock {path})", flush=True)
            fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Store:
    def __init__(self, root: str | Path = "artifacts"):
        self.root = Path(root)
        self.entries = self.root / "store"
        self.runs = self.root / "runs"
        self._tmp = self.entries / ".tmp"
        self._work = self.entries / ".work"
        self._locks = self.entries / ".locks"

    def path(self, stage: str, key: str) -> Path:
        return self.entries / stage / key

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / MANIFEST).is_file()

    def work_dir(self, stage: str, key: str) -> Path:
        return self._work / f"{stage}-{key}"

    def verify(self, stage: str, key: str, rebuild_hint: str = "") -> Path:
        """Return the entry's folder after checking every file against its manifest."""
        entry = self.path(stage, key)
        hint = rebuild_hint or f"delete {entry} and run the stage again"
        try:
            manifest = json.loads((entry / MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError):
            raise StoreError(f"{entry / MANIFEST}: missing or unreadable manifest; to rebuild: {hint}") from None
        for rel, want in manifest.items():
            f = entry / rel
            if not f.is_file():
                raise StoreError(f"{f}: file listed in the manifest is missing; to rebuild: {hint}")
            if f.stat().st_size != want["size"] or file_sha256(f) != want["sha256"]:
                raise StoreError(f"{f}: content does not match its manifest (damaged or edited); "
                                 f"to rebuild: {hint}")
        extra = {str(p.relative_to(entry)) for p in entry.rglob("*") if p.is_file()} - set(manifest) - {MANIFEST}
        if extra:
            raise StoreError(f"{entry}: files not in the manifest: {', '.join(sorted(extra))}; to rebuild: {hint}")
        return entry

    def remove(self, stage: str, key: str) -> None:
        """Delete the entry and its scratch (a damaged checkpoint goes with it)."""
        with _flock(self._locks / "gc", fcntl.LOCK_EX):
            shutil.rmtree(self.path(stage, key), ignore_errors=True)
            shutil.rmtree(self.work_dir(stage, key), ignore_errors=True)

    def build(self, stage: str, key: str, fn: Callable[[Path, Path], dict]) -> Path:
        """Run fn(out_dir, work_dir) -> summary unless the entry exists; publish it atomically.

        An exception (or Ctrl-C) anywhere leaves no entry; work_dir persists until success so a
        stage can resume from it.
        """
        with _flock(self._locks / "gc", fcntl.LOCK_SH), _flock(self._locks / f"{stage}-{key}", fcntl.LOCK_EX):
            final = self.path(stage, key)
            if self.has(stage, key):  # another process built it while we waited
                return final
            if final.exists():        # an entry without its manifest cannot be trusted: keep it aside, rebuild
                aside = self.entries / ".damaged" / f"{stage}-{key}-{os.getpid()}"
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.rename(final, aside)
                print(f"[{stage}] {final} had no manifest, so nothing in it can be checked: moved to {aside} "
                      "and built again", flush=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{stage}-{key}-", dir=self._tmp))
            work = self.work_dir(stage, key)
            work.mkdir(parents=True, exist_ok=True)
            try:
                try:
                    summary = fn(tmp, work)
                    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
                    files = sorted(p for p in tmp.rglob("*") if p.is_file())
                    manifest = {str(p.relative_to(tmp)): {"sha256": file_sha256(p), "size": p.stat().st_size}
                                for p in files}
                    (tmp / MANIFEST).write_text(json.dumps({"files": manifest}, indent=1, sort_keys=True) + "\n")
                except OSError as e:
                    remedy = _unwritable(e)
                    if remedy is None:
                        raise
                    raise StoreError(f"{stage}: cannot write to the store at {self.root} ({e.strerror or e}); "
                                     + remedy) from None
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp.chmod(0o755)  # mkdtemp makes it private; entries are for everyone to read
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
            return final

    def link(self, run: str, stage: str, key: str) -> Path:
        """Point runs/<run>/<stage> at the entry (atomic replace of a relative symlink)."""
        link = self.runs / run / stage
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(self.path(stage, key), link.parent)
        if link.is_symlink() and os.readlink(link) == target:
            return link
        tmp = link.with_name(f".{stage}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
        return link

    def gc(self) -> list[Path]:
        """Remove every entry no run links to, plus leftovers of interrupted builds."""
        with _flock(self._locks / "gc", fcntl.LOCK_EX):
            live = set()
            if self.runs.is_dir():
                for link in self.runs.glob("*/*"):
                    if link.is_symlink():
                        live.add((link.parent / os.readlink(link)).resolve())
            removed = []
            if self.entries.is_dir():
                for stage_dir in sorted(self.entries.iterdir()):
                    if stage_dir.name.startswith("."):
                        continue
                    for entry in sorted(stage_dir.iterdir()):
                        if entry.resolve() not in live:
                            shutil.rmtree(entry)
                            removed.append(entry)
            for scratch in (self._tmp, self._work, self.entries / ".damaged"):
                if scratch.is_dir():
                    for d in sorted(scratch.iterdir()):
                        shutil.rmtree(d)
                        removed.append(d)
            return removed
