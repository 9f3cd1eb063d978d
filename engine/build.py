"""Build engine/bitmcu.c into Python-loadable cffi modules, and run a model through one.

`build_library(header_text, out_dir)` compiles bitmcu.c and a small glue translation unit that
includes the generated model header (engine/header.py); the glue's `bm_glue_run_batch` loops over a
batch of images inside C, so `run_c` makes one C call per batch. `build_kernel_library(out_dir)`
exposes the kernels of bitmcu.h one by one, for kernel-level tests.

Our C is compiled by gcc with the strict flags (C99, -Wall -Wextra -Werror -pedantic, and the
sanitizers when asked) into objects that cffi links into its module; cffi's own wrapper code keeps
Python's default flags, because Python.h and the generated wrapper are not -pedantic C99 and those
defaults include -fwrapv, which would hide signed overflow from UBSan.

Sanitized modules (sanitize=True) link libasan, which must be the first library in the process:
load them only in a subprocess started with LD_PRELOAD=$(gcc -print-file-name=libasan.so) and
ASAN_OPTIONS=detect_leaks=0 (CPython itself leaks by design). See `sanitizer_env`.

This module imports only numpy and cffi (no torch, no numba), so such a subprocess stays small.
Built modules are cached in out_dir under a name hashed from every input of the build.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

ENGINE_DIR = Path(__file__).resolve().parent
CC = os.environ.get("BM_CC", "gcc")
CFLAGS = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fPIC"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-fno-omit-frame-pointer"]
STATUS = {0: "BM_OK", -1: "BM_ERR_ARG", -2: "BM_ERR_FORMAT"}
OP_KINDS = {0: "fc", 1: "conv", 2: "dwconv", 3: "pwconv"}

GLUE_C = r"""/* bitmcu cffi glue (engine/build.py): the model of bm_model.h, a batch at a time. */
#include "bitmcu.h"
#include "bm_model.h"

int32_t bm_glue_model_info(int32_t *info);
int32_t bm_glue_layer_info(int32_t i, int32_t *info, const char **name);
int32_t bm_glue_run_batch(const uint8_t *pixels, int32_t n_images, int8_t *trace_acts,
                          int32_t *trace_shifts, int32_t *logits, int32_t *preds);
int32_t bm_glue_feat(const uint8_t *set, uint8_t *get);

static const char *const bm_glue_names[BM_N_LAYERS] = BM_LAYER_NAMES;

/* info: image_size, num_classes, n_layers, trace_act_bytes, n_shifts, acc_words, act_bytes,
   ram_bytes, flash_bytes. */
int32_t bm_glue_model_info(int32_t *info)
{
    info[0] = BM_IMAGE_SIZE;
    info[1] = BM_NUM_CLASSES;
    info[2] = BM_N_LAYERS;
    info[3] = BM_TRACE_ACT_BYTES;
    info[4] = BM_N_SHIFTS;
    info[5] = BM_ACC_WORDS;
    info[6] = BM_ACT_BYTES;
    info[7] = BM_RAM_BYTES;
    info[8] = BM_FLASH_BYTES;
    return BM_OK;
}

/* info: op, format, n_out, out_h, out_w, pool. */
int32_t bm_glue_layer_info(int32_t i, int32_t *info, const char **name)
{
    const bm_layer *lay;
    if (i < 0 || i >= BM_N_LAYERS)
        return BM_ERR_ARG;
    lay = &bm_layers[i];
    info[0] = lay->op;
    info[1] = lay->format;
    info[2] = lay->n_out;
    info[3] = lay->out_h;
    info[4] = lay->out_w;
    info[5] = lay->pool;
    *name = bm_glue_names[i];
    return BM_OK;
}

/* Run n_images images (BM_IMAGE_PIXELS bytes each). trace_acts / trace_shifts: NULL, or
   BM_TRACE_ACT_BYTES / BM_N_SHIFTS per image. Returns BM_OK or the first failing bm_run status. */
int32_t bm_glue_run_batch(const uint8_t *pixels, int32_t n_images, int8_t *trace_acts,
                          int32_t *trace_shifts, int32_t *logits, int32_t *preds)
{
    int32_t i;
    for (i = 0; i < n_images; i++) {
        bm_trace trace;
        bm_status st;
        trace.acts = trace_acts;
        trace.shifts = trace_shifts;
        trace.logits = NULL;
        st = bm_run(BM_MODEL, pixels, trace_acts != NULL ? &trace : NULL, logits);
        if (st != BM_OK)
            return st;
        preds[i] = bm_argmax(logits, BM_NUM_CLASSES);
        pixels += BM_IMAGE_PIXELS;
        logits += BM_NUM_CLASSES;
        if (trace_acts != NULL) {
            trace_acts += BM_TRACE_ACT_BYTES;
            trace_shifts += BM_N_SHIFTS;
        }
    }
    return BM_OK;
}

/* The CNN driver's state between runs (bitmcu.h, bm_model.feat): set (when not NULL) is written to it, then it
   is copied to get (when not NULL). Returns its size, 0 for an fc model. */
int32_t bm_glue_feat(const uint8_t *set, uint8_t *get)
{
    const bm_model *m = BM_MODEL;
    uint32_t i;
    for (i = 0; i < m->feat_bytes; i++) {
        if (set != NULL)
            m->feat[i] = set[i];
        if (get != NULL)
            get[i] = m->feat[i];
    }
    return (int32_t)m->feat_bytes;
}
"""

GLUE_CDEF = """
int32_t bm_glue_model_info(int32_t *info);
int32_t bm_glue_layer_info(int32_t i, int32_t *info, const char **name);
int32_t bm_glue_run_batch(const uint8_t *pixels, int32_t n_images, int8_t *trace_acts,
                          int32_t *trace_shifts, int32_t *logits, int32_t *preds);
int32_t bm_glue_feat(const uint8_t *set, uint8_t *get);
"""

# The kernels of bitmcu.h (cffi's cdef cannot read the header's preprocessor lines); the wrapper
# includes bitmcu.h itself, so a prototype here that drifts from the header fails to compile.
KERNEL_CDEF = """
typedef enum bm_status { BM_OK = 0, BM_ERR_ARG = -1, BM_ERR_FORMAT = -2 } bm_status;
bm_status bm_input(const uint8_t *pixels, int32_t n, int32_t zero, int8_t *out);
bm_status bm_fc(const int8_t *x, int32_t n_in, const uint32_t *words, int32_t row_words, int32_t fmt,
                int32_t n_out, const uint8_t *out_shifts, int32_t relu, int32_t *out);
bm_status bm_conv3x3(const int8_t *x, int32_t c_in, int32_t h, int32_t w, const uint32_t *words,
                     int32_t row_words, int32_t fmt, int32_t n_out, int32_t groups,
                     const uint8_t *out_shifts, int32_t relu, int32_t *out);
bm_status bm_maxpool2(const int32_t *y, int32_t c, int32_t h, int32_t w, int32_t *out);
int32_t bm_shiftnorm(const int32_t *y, int32_t n, int8_t *out);
int32_t bm_argmax(const int32_t *logits, int32_t n);
void bm_glue_formats(int32_t *field_bits, int32_t *codes_per_word, int32_t *nf4);
"""

# bitmcu.h's per-format constants, in format id order, for a test against the Python format table.
FORMATS_C = r"""
void bm_glue_formats(int32_t *field_bits, int32_t *codes_per_word, int32_t *nf4)
{
#define BM_GLUE_FMT(x) BM_FMT_##x##_FIELD_BITS, BM_FMT_##x##_CODES_PER_WORD
    static const int32_t fmts[BM_FMT_COUNT][2] = {
        {BM_GLUE_FMT(BINARY)}, {BM_GLUE_FMT(BINARYBALANCED)}, {BM_GLUE_FMT(TERNARY)}, {BM_GLUE_FMT(2BITSYM)},
        {BM_GLUE_FMT(4BITSYM)}, {BM_GLUE_FMT(4BIT)}, {BM_GLUE_FMT(8BIT)}, {BM_GLUE_FMT(FP130)}, {BM_GLUE_FMT(NF4)}};
    static const int8_t codes[16] = BM_NF4_CODES;
    int32_t i;
    for (i = 0; i < BM_FMT_COUNT; i++) {
        field_bits[i] = fmts[i][0];
        codes_per_word[i] = fmts[i][1];
    }
    for (i = 0; i < 16; i++)
        nf4[i] = codes[i];
}
"""


def _compile_objects(sources: Sequence[Path], build_dir: Path, include: Sequence[Path], flags: list[str]) -> list[str]:
    objs = []
    for src in sources:
        obj = build_dir / (src.stem + ".o")
        cmd = [CC, *flags, *(f"-I{p}" for p in include), "-c", str(src), "-o", str(obj)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"engine.build: compiling {src.name} failed:\n{' '.join(cmd)}\n{res.stderr}")
        objs.append(str(obj))
    return objs


def _cffi_module(name: str, cdef: str, source: str, objects: list[str], build_dir: Path, link: list[str],
                 include: Sequence[Path]) -> Path:
    import cffi                     # the build side of cffi; importing it at load time is not needed

    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(name, source, extra_objects=objects, extra_link_args=link,
                   include_dirs=[str(p) for p in include])
    return Path(ffi.compile(tmpdir=str(build_dir)))


def _key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in (ENGINE_DIR / "bitmcu.c", ENGINE_DIR / "bitmcu.h"):
        h.update(p.read_bytes())
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _built(build_dir: Path, name: str) -> Path | None:
    found = sorted(build_dir.glob(f"{name}.*.so")) + sorted(build_dir.glob(f"{name}.so"))
    return found[0] if found else None


def build_library(header_text: str, out_dir: Path, sanitize: bool = False,
                  defines: Sequence[str] = ()) -> Path:
    """Compile bitmcu.c + the glue over header_text into a cffi module; returns the .so path.

    defines: extra -D options (e.g. "BM_CFG_FORMATS=0x9F") for both translation units. A header that
    does not compile (a format left out of BM_CFG_FORMATS) raises RuntimeError with gcc's message.
    """
    flags = [*CFLAGS, *(f"-D{d}" for d in defines), *(SANITIZE if sanitize else [])]
    name = "_bm_model_" + _key(header_text, GLUE_C, " ".join(flags))
    build_dir = Path(out_dir).resolve() / name  # absolute: cffi links from inside build_dir
    build_dir.mkdir(parents=True, exist_ok=True)
    done = _built(build_dir, name)
    if done:
        return done
    (build_dir / "bm_model.h").write_text(header_text)
    (build_dir / "bm_glue.c").write_text(GLUE_C)
    include = [ENGINE_DIR, build_dir]
    objs = _compile_objects([ENGINE_DIR / "bitmcu.c", build_dir / "bm_glue.c"], build_dir, include, flags)
    return _cffi_module(name, GLUE_CDEF, "#include <stdint.h>\n" + GLUE_CDEF, objs, build_dir,
                        SANITIZE if sanitize else [], include)


def build_kernel_library(out_dir: Path, sanitize: bool = False, defines: Sequence[str] = ()) -> Path:
    """Compile bitmcu.c alone into a cffi module exposing the kernels (bm_fc, bm_conv3x3, ...)."""
    flags = [*CFLAGS, *(f"-D{d}" for d in defines), *(SANITIZE if sanitize else [])]
    name = "_bm_kernels_" + _key(KERNEL_CDEF, " ".join(flags))
    build_dir = Path(out_dir).resolve() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    done = _built(build_dir, name)
    if done:
        return done
    objs = _compile_objects([ENGINE_DIR / "bitmcu.c"], build_dir, [ENGINE_DIR], flags)
    source = "".join(f"#define {d.replace('=', ' ', 1)}\n" for d in defines) + '#include "bitmcu.h"\n' + FORMATS_C
    return _cffi_module(name, KERNEL_CDEF, source, objs, build_dir, SANITIZE if sanitize else [], [ENGINE_DIR])


_LOADED: dict[str, ModuleType] = {}


def load_library(path: Path) -> ModuleType:
    """Import a module built by build_library or build_kernel_library; it has .ffi and .lib."""
    path = Path(path).resolve()
    if str(path) in _LOADED:
        return _LOADED[str(path)]
    name = path.name.split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    if spec is None:
        raise ImportError(f"engine.build: cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    _LOADED[str(path)] = mod
    return mod


def sanitizer_env() -> dict[str, str]:
    """Environment for a subprocess that loads a sanitize=True module (LD_PRELOAD libasan first)."""
    lib = subprocess.run([CC, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ)
    env.update(LD_PRELOAD=lib, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87")
    return env


def model_info(lib_module: ModuleType) -> dict[str, Any]:
    """Sizes and per-layer shapes that a module built by build_library reports from its header."""
    ffi, lib = lib_module.ffi, lib_module.lib
    info = ffi.new("int32_t[9]")
    lib.bm_glue_model_info(info)
    keys = ("image_size", "num_classes", "n_layers", "trace_act_bytes", "n_shifts", "acc_words", "act_bytes",
            "ram_bytes", "flash_bytes")
    out: dict[str, Any] = dict(zip(keys, (int(v) for v in info)))
    layers = []
    for i in range(out["n_layers"]):
        li, name = ffi.new("int32_t[6]"), ffi.new("char **")
        lib.bm_glue_layer_info(i, li, name)
        op, fmt, n_out, oh, ow, pool = (int(v) for v in li)
        kind = OP_KINDS[op]
        layers.append(dict(name=ffi.string(name[0]).decode(), kind=kind, format_id=fmt, pool=bool(pool),
                           out_shape=(n_out,) if kind == "fc" else (n_out, oh, ow)))
    out["layers"] = layers
    return out


def run_c(lib_module: ModuleType, pixels: np.ndarray, trace: bool = True) -> dict[str, Any]:
    """Run the C engine on uint8 images [B, N, N], one C call for the batch.

    Returns the dict of refimpl.model.run: logits int64 [B, classes], preds int64 [B], acts
    [(name, array)] (input x0 and each requantized layer int8, then the logits) and shifts
    [(name, int64 [B])]; acts and shifts are empty lists when trace is False.
    """
    ffi, lib = lib_module.ffi, lib_module.lib
    info = model_info(lib_module)
    n, classes = info["image_size"], info["num_classes"]
    p = np.asarray(pixels)
    if p.dtype != np.uint8 or p.ndim != 3 or p.shape[1:] != (n, n):
        raise ValueError(f"engine.run_c: pixels must be uint8 [B, {n}, {n}]; got {p.dtype} {p.shape}")
    p = np.ascontiguousarray(p)
    b = p.shape[0]
    logits = np.zeros((b, classes), dtype=np.int32)
    preds = np.zeros(b, dtype=np.int32)
    t_acts = np.zeros((b, info["trace_act_bytes"]), dtype=np.int8) if trace else None
    t_shifts = np.zeros((b, max(info["n_shifts"], 1)), dtype=np.int32) if trace else None
    if b:
        st = lib.bm_glue_run_batch(
            ffi.from_buffer("uint8_t[]", p), b,
            ffi.from_buffer("int8_t[]", t_acts, require_writable=True) if trace else ffi.NULL,
            ffi.from_buffer("int32_t[]", t_shifts, require_writable=True) if trace else ffi.NULL,
            ffi.from_buffer("int32_t[]", logits, require_writable=True),
            ffi.from_buffer("int32_t[]", preds, require_writable=True))
        if st != 0:
            raise RuntimeError(f"engine.run_c: bm_run returned {STATUS.get(st, st)}")
    acts: list[tuple[str, np.ndarray]] = []
    shifts: list[tuple[str, np.ndarray]] = []
    if trace:
        cnn = info["layers"][0]["kind"] != "fc"
        acts.append(("input", t_acts[:, :n * n].reshape((b, 1, n, n) if cnn else (b, n * n)).copy()))
        off = n * n
        for i, lay in enumerate(info["layers"][:-1]):
            size = int(np.prod(lay["out_shape"]))
            acts.append((lay["name"], t_acts[:, off:off + size].reshape(b, *lay["out_shape"]).copy()))
            shifts.append((lay["name"], t_shifts[:, i].astype(np.int64)))
            off += size
        acts.append((info["layers"][-1]["name"], logits.astype(np.int64)))
    return dict(logits=logits.astype(np.int64), preds=preds.astype(np.int64), acts=acts, shifts=shifts)
