"""Find SDCC and the Padauk simulator `spdk`, and build `spdk` once when it is missing.

Debian's `sdcc` package compiles for pdk13/pdk14, but its `sdcc-ucsim` package leaves the Padauk simulator
out. The simulator is in Debian's `sdcc` *source* package (sim/ucsim/pdk.src), so `build_spdk` enables a
deb-src entry for the running suite, downloads that source with `apt-get source --download-only`, and
builds ucsim's pdk target into the cache folder (`spdk_home()`, default ~/.cache/bitmcu/spdk). That needs
root and apt; elsewhere `manual_steps()` says how to do it by hand.

    python -m mcu.padauk.tools          # installs sdcc (apt) and builds spdk if missing; prints the paths
    python -m mcu.padauk.tools --quiet  # the same, silent when both are there (./run pytest calls it)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SRC_LIST = Path("/etc/apt/sources.list.d/bitmcu-deb-src.sources")
BUILD_DEPS = ("bison", "flex", "g++", "make", "dpkg-dev")
# ucsim's other simulators, left out so only pdk builds (SDCC 4.2's configure names)
OTHER_PORTS = ("mcs51", "ds390", "avr", "z80", "z180", "gbz80", "r2k", "r3ka", "tlcs", "m68hc08", "s08", "xa",
               "stm8", "st7", "p1516", "m6809", "m6800", "m68hc11", "mos6502", "rxk", "pblaze")


def spdk_home() -> Path:
    """The cache folder spdk is built into: $BITMCU_SPDK_HOME, else ~/.cache/bitmcu/spdk."""
    return Path(os.environ.get("BITMCU_SPDK_HOME") or Path.home() / ".cache" / "bitmcu" / "spdk")


def find_spdk() -> Path | None:
    """$BITMCU_SPDK, then `spdk` on PATH, then the cache's bin/spdk; None when none is there."""
    for cand in (os.environ.get("BITMCU_SPDK"), shutil.which("spdk"), spdk_home() / "bin" / "spdk"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    return None


def find_sdcc() -> Path | None:
    found = shutil.which("sdcc")
    return Path(found) if found else None


def manual_steps() -> str:
    """How to get spdk by hand (no root or no apt)."""
    return ("spdk (the Padauk simulator of SDCC's ucsim) is missing. As root on Debian/Ubuntu run "
            "`python -m mcu.padauk.tools`; by hand: get SDCC's source (Debian: add a deb-src line and run "
            "`apt-get source --download-only sdcc`, or the release tarball from sdcc.sourceforge.net), install "
            "bison, flex and g++, run `./configure && make` in sim/ucsim, and put pdk.src/spdk on PATH or set "
            f"BITMCU_SPDK to it (the cache folder is {spdk_home()})")


def _say(msg: str) -> None:
    print(f"[spdk] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path | None = None, log: Path | None = None) -> None:
    _say(" ".join(cmd) + (f"  (log: {log})" if log else ""))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if log is None:
        subprocess.run(cmd, cwd=cwd, check=True, env=env, stdout=sys.stderr)
        return
    with open(log, "ab") as f:
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}); last lines of {log}:\n" + "\n".join(tail))


def _can_apt() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def _os_release() -> dict[str, str]:
    out = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        k, _, v = line.partition("=")
        out[k] = v.strip('"')
    return out


def _deb_src_entry() -> None:
    """A deb-src entry for the running suite (same mirror as the deb entries), written once."""
    if SRC_LIST.exists():
        return
    rel = _os_release()
    suite = rel.get("VERSION_CODENAME") or "stable"
    uri = "http://archive.ubuntu.com/ubuntu" if rel.get("ID") == "ubuntu" else "http://deb.debian.org/debian"
    comp = "main universe" if rel.get("ID") == "ubuntu" else "main"
    _say(f"adding {SRC_LIST} (deb-src {uri} {suite} {comp})")
    SRC_LIST.write_text(f"Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: {comp}\n"
                        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n" if rel.get("ID") != "ubuntu"
                        else f"Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: {comp}\n")


def ensure_sdcc() -> Path:
    """sdcc on PATH, installed with apt when missing and we may; raises with the manual step otherwise."""
    found = find_sdcc()
    if found:
        return found
    if not _can_apt():
        raise RuntimeError("sdcc is missing: apt-get install sdcc (Debian/Ubuntu, as root), or SDCC 4.2 from "
                           "sdcc.sourceforge.net")
    _run(["apt-get", "update", "-qq"])
    _run(["apt-get", "install", "-y", "-qq", "sdcc"])
    return find_sdcc() or Path("sdcc")


def build_spdk(home: Path | None = None) -> Path:
    """Build spdk into home/bin/spdk from Debian's sdcc source package; returns its path."""
    home = Path(home or spdk_home())
    target = home / "bin" / "spdk"
    if target.is_file():
        return target
    if not _can_apt():
        raise RuntimeError(manual_steps())
    home.mkdir(parents=True, exist_ok=True)
    _deb_src_entry()
    _run(["apt-get", "update", "-qq"])
    _run(["apt-get", "install", "-y", "-qq", *BUILD_DEPS])
    with tempfile.TemporaryDirectory(prefix="spdk-", dir=home) as tmp:
        work = Path(tmp)
        log = home / "build.log"
        _run(["apt-get", "source", "--download-only", "sdcc"], cwd=work, log=log)
        dsc = sorted(work.glob("sdcc_*.dsc"))
        if not dsc:
            raise RuntimeError(f"apt-get source sdcc gave no .dsc in {work}; see {log}")
        _run(["dpkg-source", "--no-check", "-x", dsc[0].name, "src"], cwd=work, log=log)
        ucsim = work / "src" / "sim" / "ucsim"
        _run(["./configure", *(f"--disable-{p}-port" for p in OTHER_PORTS)], cwd=ucsim, log=log)
        jobs = str(max(1, min(4, os.cpu_count() or 1)))
        _run(["make", "-j", jobs], cwd=ucsim, log=log)
        built = ucsim / "src" / "sims" / "pdk.src" / "spdk"
        if not built.is_file():
            built = next(iter(sorted(ucsim.rglob("spdk"))), built)
        if not built.is_file():
            raise RuntimeError(f"make in {ucsim} built no spdk; see {log}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target)
    _say(f"built {target}")
    return target


def ensure_spdk() -> Path:
    return find_spdk() or build_spdk()


def main(argv: list[str] | None = None) -> int:
    quiet = "--quiet" in (sys.argv[1:] if argv is None else argv)
    try:
        sdcc, spdk = ensure_sdcc(), ensure_spdk()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"[spdk] {e}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"sdcc: {sdcc}\nspdk: {spdk}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
