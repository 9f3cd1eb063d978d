"""Config schema and loader: one table of keys, validated before any work starts.

A preset is a YAML file of sections (`data:`, `model:`, ...) whose leaves are the dotted keys below.
Every problem is reported as `file: key: problem (allowed: ...)`; nothing here raises a traceback
at the user.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from contract.chips import CHIP_NAMES, CHIPS, RISCV_NAMES, Chip
from contract.errors import UserError
from contract.formats import FORMAT_NAMES, FORMATS
from contract.spec import CLIPS, IMAGE_SIZES, INPUT_ZEROS, KINDS, NORMS, SCALINGS, model_problems
from mcu.build import KERNEL_PLACES
from mcu.padauk import header as padauk


MNIST_TRAIN = 60000                # training images in MNIST


def cuda_present() -> bool:
    """An NVIDIA driver's device node: what train.device auto picks, found without importing torch."""
    return Path("/dev/nvidiactl").exists()


class ConfigError(UserError):
    pass


def _chip_text(c: Chip) -> str:
    """mcu.target's line for one chip: ISA, multiplier, memories."""
    flash = f"{c.rom_words:,} words ROM" if c.family == "padauk" else f"{c.flash // 1024} KB flash"
    ram = f"{c.ram} B RAM" if c.ram < 1024 else f"{c.ram // 1024} KB RAM"
    return f"{c.name} ({c.isa}, {'a' if c.multiplier else 'no'} multiplier, {flash}, {ram})"


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # int | float | bool | str | path | ints | strs
    default: Any
    doc: str
    choices: tuple | None = None
    lo: float | None = None
    hi: float | None = None
    min_len: int = 1
    max_len: int = 16
    # Runtime keys say where or how to run, never what comes out (the dataset is checksummed, the
    # serial port only says where the board is), so they never enter a store key.
    runtime: bool = False
    # What the value means on this machine, as it enters a store key (train.threads 0 = the core count):
    # keys whose meaning depends on the machine are resolved so that equal keys mean equal results.
    resolve: Callable[[Any], Any] | None = None
    # A key that means something only while another is set enters store keys only then, so that adding
    # it kept every existing entry.
    only_with: str | None = None


_KEYS: list[Key] = [
    Key("data.image_size", "int", 16, "input images are downscaled from 28x28 to NxN", lo=IMAGE_SIZES[0],
        hi=IMAGE_SIZES[1]),
    Key("data.mnist_dir", "path", None,
        "folder holding the four MNIST idx files (raw or .gz); searched first", runtime=True),
    Key("data.allow_download", "bool", False,
        "download MNIST with torchvision when no local copy is found", runtime=True),
    # model
    Key("model.kind", "str", "fc", "fc: fully connected; cnn: sequential depthwise CNN then FC layers",
        choices=KINDS),
    Key("model.widths", "ints", [64, 64, 64], "hidden FC widths (fc: 2 to 4 layers; cnn: 1 to 3 after the convs)",
        lo=1, hi=4096, max_len=4),
    Key("model.cnn_channels", "int", 64, "channels C of the CNN's conv stack (cnn only)", lo=1, hi=256),
    Key("model.mix", "bool", False, "cnn only: a 1x1 conv pw1 after dw1's pool that mixes the channels, which "
        "the depthwise convs never do (C*C weights, and dw1's maps held whole)"),
    Key("model.input_zero", "int", 16, "Z in the input mapping x0 = (pixel >> 1) - Z (engine/CONTRACT.md)",
        lo=INPUT_ZEROS[0], hi=INPUT_ZEROS[1]),
    # quantization
    Key("quant.formats", "strs", ["4bitsym"],
        "weight format: one for every layer, or a list with one per weight layer (cnn: its 3 convs, 4 with model.mix, first)",
        choices=FORMAT_NAMES, max_len=8),
    Key("quant.scaling", "str", "per_tensor", "one clip per layer, or one per output row (power-of-two steps)",
        choices=SCALINGS),
    Key("quant.clip", "str", "octav", "clip value: prop (mean|w| / prop_scale) or octav (MSE-optimal)",
        choices=CLIPS),
    Key("quant.prop_scale", "float", 0.25, "quantscale for clip: prop", lo=0.001, hi=100.0),
    Key("quant.norm", "str", "rms", "normalization whose gradient the activation STE uses",
        choices=NORMS),
    Key("quant.norm_eps", "float", 1e-5, "epsilon of that normalization", lo=1e-12, hi=1.0),
    # pruning
    Key("prune.keep", "int", 0, "channels (cnn) or first-layer units (fc) kept after pruning; 0 = off",
        lo=0, hi=4096),
    Key("prune.l1", "float", 5e-4, "L1 weight on the pruning mask before the prune epoch", lo=0.0, hi=1.0),
    Key("prune.epoch", "int", 10, "epoch after which the mask is frozen to the top prune.keep", lo=1, hi=10000),
    # training
    Key("train.epochs", "int", 60, "training epochs", lo=1, hi=10000),
    Key("train.batch_size", "int", 128, "samples per optimizer step", lo=1, hi=65536),
    Key("train.lr", "float", 1e-3, "Adam learning rate", lo=1e-7, hi=1.0),
    Key("train.scheduler", "str", "cosine", "learning-rate schedule",
        choices=("cosine", "step", "cosine_restarts")),
    Key("train.step_size", "int", 20, "epochs per step (scheduler: step)", lo=1, hi=10000),
    Key("train.gamma", "float", 0.5, "lr factor per step (scheduler: step)", lo=1e-6, hi=1.0),
    Key("train.restart_period", "int", 10, "epochs of the first cycle (scheduler: cosine_restarts)", lo=1, hi=10000),
    Key("train.restart_mult", "int", 1, "cycle length factor (scheduler: cosine_restarts)", lo=1, hi=16),
    Key("train.seed", "int", 0, "seed of initialization, shuffling and augmentation", lo=0, hi=2**31 - 1),
    Key("train.val_images", "int", 5000, "training images held out as the validation split (class-stratified, "
        "the same for every seed) that model selection and the per-epoch curve use; the test set is evaluated "
        "once, after training; 0 = none", lo=0, hi=MNIST_TRAIN // 2),
    Key("train.train_limit", "int", 0, "use only the first N training images left after the validation split; "
        "0 = all of them", lo=0, hi=MNIST_TRAIN),
    Key("train.augment", "bool", True, "add augmented copies of the training set each epoch"),
    Key("train.aug_copies", "int", 1, "augmented copies per epoch (1 = BitNetMCU's 120k samples)", lo=1, hi=16),
    Key("train.rotation_deg", "float", 20.0, "max |rotation| in degrees", lo=0.0, hi=180.0),
    Key("train.translate", "float", 0.1, "max shift as a fraction of the image size", lo=0.0, hi=0.5),
    Key("train.scale_min", "float", 0.9, "smallest zoom factor", lo=0.1, hi=4.0),
    Key("train.scale_max", "float", 1.1, "largest zoom factor", lo=0.1, hi=4.0),
    Key("train.elastic_prob", "float", 0.0, "probability of an elastic distortion per image", lo=0.0, hi=1.0),
    Key("train.elastic_alpha", "float", 40.0, "elastic displacement strength (pixels of the 28x28 image)",
        lo=0.0, hi=1000.0),
    Key("train.elastic_sigma", "float", 4.0, "elastic smoothness (Gaussian sigma, pixels)", lo=0.1, hi=100.0),
    Key("train.weight_decay", "float", 0.0, "decoupled weight decay (AdamW) on the weight layers; 0 = plain Adam",
        lo=0.0, hi=1.0),
    Key("train.label_smoothing", "float", 0.0, "cross-entropy label smoothing", lo=0.0, hi=0.5),
    Key("train.ema", "float", 0.0, "decay of an exponential moving average of the weights, which is "
        "evaluated and exported instead of the last step's; 0 = off (e.g. 0.999)", lo=0.0, hi=0.99999),
    Key("train.select", "str", "last", "which epoch's weights the stage keeps: the last, or best_val: the epoch "
        "of the highest validation accuracy on the per-epoch curve (the earlier of a tie; with pruning, only "
        "epochs from prune.epoch on); needs train.val_images", choices=("last", "best_val")),
    Key("train.teacher", "path", None, "a preset whose trained model teaches this one (knowledge distillation: "
        "the loss adds the match to its softened predictions); it is trained first if need be, with this "
        "config's train.device and train.threads; null = none"),
    Key("train.distill_weight", "float", 0.5, "share of the distillation term in the loss, the rest being "
        "cross-entropy on the labels (with train.teacher only)", lo=0.0, hi=1.0, only_with="train.teacher"),
    Key("train.distill_temperature", "float", 4.0, "temperature that softens both models' predictions in the "
        "distillation term (with train.teacher only)", lo=0.1, hi=100.0, only_with="train.teacher"),
    Key("train.compile", "bool", True, "torch.compile the training step (FC: all of it, ~2.5x faster on CPU; "
        "CNN: the requantization, ~1.5x)"),
    # The float reductions of training depend on the device and the thread count, so both enter the key.
    Key("train.device", "str", "auto", "auto: CUDA when present, else CPU", choices=("auto", "cpu", "cuda"),
        resolve=lambda v: ("cuda" if cuda_present() else "cpu") if v == "auto" else v),
    Key("train.threads", "int", 0, "CPU threads for torch; 0 = one per core", lo=0, hi=1024,
        resolve=lambda v: v or os.cpu_count() or 1),
    # import (doit import writes these presets)
    Key("import.src", "path", None,
        "a BitNetMCU checkpoint (.pth) that the train stage converts instead of training; its content "
        "enters the store key"),
    # deployment
    Key("mcu.target", "str", RISCV_NAMES[0], "chip: " + ", ".join(_chip_text(CHIPS[n]) for n in CHIP_NAMES)
        + "; the Padauk parts run demo firmware of FC models in the simulator spdk (docs/padauk.md)",
        choices=CHIP_NAMES),
    Key("mcu.mode", "str", "demo", "firmware: demo (embedded test images, prints results) or serial "
        "(classifies images sent over USART1, mcu/protocol.py; RISC-V only)", choices=("demo", "serial")),
    Key("mcu.demo_images", "int", 0, "test images embedded by the demo firmware; 0 = as many as fit in flash "
        "(Padauk: in ROM)",
        lo=0, hi=10000),
    Key("mcu.kernels", "str", "sram", "where the inference kernels run: sram (copied at boot, no flash wait "
        "states), flash, or fit (the hottest kernels that fit in the SRAM the firmware leaves free, the rest in "
        "flash); RISC-V only, ignored on Padauk (its code runs from its one program memory)",
        choices=KERNEL_PLACES),
    Key("mcu.segment_pins", "strs", [], "serial mode: GPIO pins of a 7-segment display showing the predicted "
        "digit, segments a..g (and dp), e.g. [PC0, PC1, PC2, PC3, PC4, PC6, PC7]; [] = none; RISC-V only",
        choices=tuple(dict.fromkeys(p for n in RISCV_NAMES for p in CHIPS[n].pins)), min_len=0, max_len=8),
    Key("mcu.segment_active_low", "bool", False, "true for a common-anode display (a segment lights when its "
        "pin is low); RISC-V only, ignored on Padauk"),
    Key("mcu.port", "path", None, "serial port of the board's USART1 (USB-serial adapter) for `doit monitor` "
        "and `doit demo` (`python -m pipeline.send` takes --port); null = the first /dev/ttyUSB* or /dev/ttyACM*", runtime=True),
]

SCHEMA: dict[str, Key] = {k.name: k for k in _KEYS}

# Cross-key rules: each takes the full value dict and returns [(key, problem)].
def _scale_range(v: Mapping[str, Any]) -> list[tuple[str, str]]:
    if v["train.scale_min"] > v["train.scale_max"]:
        return [("train.scale_min", f"{v['train.scale_min']} is above train.scale_max {v['train.scale_max']} "
                 "(allowed: scale_min <= scale_max)")]
    return []


def _steps_per_epoch(v: Mapping[str, Any]) -> list[tuple[str, str]]:
    copies = 1 + (v["train.aug_copies"] if v["train.augment"] else 0)
    left = MNIST_TRAIN - v["train.val_images"]
    if v["train.train_limit"] > left:
        return [("train.train_limit", f"{v['train.train_limit']} is more than the {left} training images left "
                 f"after the validation split (train.val_images {v['train.val_images']}) (allowed: 0 to {left})")]
    images = v["train.train_limit"] or left
    samples = images * copies
    if v["train.batch_size"] > samples and v["import.src"] is None:
        return [("train.batch_size", f"{v['train.batch_size']} is larger than the {samples} samples of an epoch "
                 f"({images} images x {copies} copies): no optimizer step would "
                 f"run (allowed: at most {samples}, or a larger train.train_limit)")]
    return []


def _select_needs_validation(v: Mapping[str, Any]) -> list[tuple[str, str]]:
    if v["train.select"] == "best_val" and not v["train.val_images"]:
        return [("train.select", "best_val chooses the epoch on the validation split, but train.val_images is 0 "
                 "(allowed: last, or train.val_images above 0)")]
    return []


def _prune_epoch(v: Mapping[str, Any]) -> list[tuple[str, str]]:
    if v["prune.keep"] and v["prune.epoch"] > v["train.epochs"]:
        return [("prune.epoch", f"{v['prune.epoch']} is after the last epoch (train.epochs {v['train.epochs']}), so "
                 f"pruning would never happen (allowed: 1 to {v['train.epochs']}, or prune.keep: 0)")]
    return []


def chip_formats(v: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Config rule: every format of quant.formats runs on mcu.target (a chip without a multiplier takes only
    multiplier-free formats). The search checks its format choices with it too."""
    chip = CHIPS[v["mcu.target"]]
    if chip.family == "padauk":       # the SDCC engine's own list (multiplier-free, byte packed)
        return [("quant.formats" if what == "formats" else "model.kind", f"mcu.target {chip.name}: {msg}")
                for what, msg in padauk.problems(v["model.kind"], [f for f in v["quant.formats"] if f != "none"])]
    if chip.multiplier:
        return []
    bad = sorted({f for f in v["quant.formats"] if f != "none" and not FORMATS[f].multiplier_free})
    if not bad:
        return []
    free = ", ".join(n for n, f in FORMATS.items() if f.multiplier_free)
    with_mul = ", ".join(n for n in RISCV_NAMES if CHIPS[n].multiplier)
    return [("quant.formats", f"{', '.join(bad)} need a multiply instruction, which mcu.target {chip.name} lacks "
             f"(allowed: {free}; or mcu.target: {with_mul})")]


def _riscv_only(v: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A Padauk part runs demo firmware only and drives no display: the RISC-V firmware's choices are refused
    rather than silently dropped (mcu.kernels and mcu.segment_active_low choose nothing there: ignored)."""
    chip = CHIPS[v["mcu.target"]]
    if chip.family == "riscv":
        return []
    out = []
    if v["mcu.mode"] != "demo":
        out.append(("mcu.mode", f"{v['mcu.mode']}: mcu.target {chip.name} runs demo firmware only (allowed: demo; "
                    f"serial needs one of {', '.join(RISCV_NAMES)})"))
    if v["mcu.segment_pins"]:
        out.append(("mcu.segment_pins", f"mcu.target {chip.name} drives no 7-segment display (allowed: []; "
                    f"the pins are for {', '.join(RISCV_NAMES)})"))
    return out


RULES: list[Callable[[Mapping[str, Any]], list[tuple[str, str]]]] = [
    model_problems, _scale_range, _steps_per_epoch, _prune_epoch, _select_needs_validation, chip_formats, _riscv_only]


@dataclass(frozen=True)
class Config:
    """A validated config: every schema key has a value (preset value or default)."""
    name: str
    path: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def resolved(self, key: str) -> Any:
        """The value as this machine runs it (and as it enters a store key)."""
        k = SCHEMA[key]
        return k.resolve(self.values[key]) if k.resolve else self.values[key]

    def replace(self, **changes: Any) -> "Config":
        """A copy with dotted keys changed (pass `{'a.b': v}` via **{...}); re-validated."""
        merged = dict(self.values)
        merged.update(changes)
        return from_values(merged, name=self.name, path=self.path)


def allowed(key: Key) -> str:
    """The values a key accepts, worded as in the loader's `(allowed: ...)` messages."""
    if key.choices is not None:
        return ", ".join(str(c) for c in key.choices)
    if key.kind == "bool":
        return "true, false"
    if key.kind in ("int", "float", "ints"):
        lo = "-inf" if key.lo is None else key.lo
        hi = "inf" if key.hi is None else key.hi
        what = "integers" if key.kind == "ints" else "an integer" if key.kind == "int" else "a number"
        suffix = f", {key.min_len} to {key.max_len} of them" if key.kind == "ints" else ""
        return f"{what} from {lo} to {hi}{suffix}"
    if key.kind == "path":
        return "a path, or null"
    if key.kind == "strs":
        return f"a name or a list of {key.min_len} to {key.max_len} names"
    return "a string"


def _check_scalar(key: Key, v: Any, kind: str) -> tuple[Any, str | None]:
    """Coerce one scalar to the key's type; return (value, problem)."""
    if kind == "bool":
        return (v, None) if isinstance(v, bool) else (v, f"must be true or false; got {v!r}")
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            return v, f"must be an integer; got {v!r}"
    elif kind == "float":
        if isinstance(v, str) and _number(v):
            return v, (f"must be a number; got the string {v!r}: YAML reads an exponent without a decimal point "
                       f"as text, write {_number(v)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v, f"must be a number; got {v!r}"
        v = float(v)
        if not math.isfinite(v):
            return v, f"must be a finite number; got {v!r}"
    elif kind == "str":
        if not isinstance(v, str):
            return v, f"must be a string; got {v!r}"
    if key.choices is not None and v not in key.choices:
        return v, f"unknown value {v!r}"
    if kind in ("int", "float"):
        if (key.lo is not None and v < key.lo) or (key.hi is not None and v > key.hi):
            return v, f"{v!r} is out of range"
    return v, None


def _check(key: Key, v: Any) -> tuple[Any, str | None]:
    if key.kind == "path":
        if v is None:
            return None, None
        return (str(v), None) if isinstance(v, str) and v else (v, f"must be a path or null; got {v!r}")
    if key.kind in ("ints", "strs"):
        if key.kind == "strs" and isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            return v, f"must be a list; got {v!r}"
        if not key.min_len <= len(v) <= key.max_len:
            return v, f"has {len(v)} entries"
        out = []
        for item in v:
            item, problem = _check_scalar(key, item, "int" if key.kind == "ints" else "str")
            if problem:
                return v, problem
            out.append(item)
        return out, None
    return _check_scalar(key, v, key.kind)


def check_value(name: str, v: Any) -> tuple[Any, str | None]:
    """One value of a schema key on its own: (the value as the config holds it, `problem (allowed: ...)` or
    None). The search checks each choice of its space with it."""
    v, problem = _check(SCHEMA[name], v)
    return v, None if problem is None else f"{problem} (allowed: {allowed(SCHEMA[name])})"


def _number(text: str) -> str:
    """For a string Python reads as a number, the same number as YAML reads a float (a decimal point and a
    signed exponent: 5e-3 -> 5.0e-3); '' for any other string."""
    try:
        mant, exp = f"{float(text):.6e}".split("e")
    except ValueError:
        return ""
    mant = mant.rstrip("0")
    return f"{mant}{'0' if mant.endswith('.') else ''}e{int(exp):+d}"


SECTIONS = frozenset(k.split(".")[0] for k in SCHEMA)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Sections of a preset -> dotted keys; a section left empty (every key commented out) sets none."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if v is None and not prefix and name in SECTIONS:
            continue
        if isinstance(v, dict) and name not in SCHEMA:
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def closest(name: str) -> str:
    names = list(SCHEMA)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    if not close:  # a right leaf in the wrong section, e.g. `train.image_size`
        leaf = name.rsplit(".", 1)[-1]
        close = [n for n in names if n.rsplit(".", 1)[-1] == leaf][:1]
    if not close:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.0)
    return close[0]


def from_values(raw: Mapping[str, Any], name: str = "inline", path: str = "<inline>") -> Config:
    """Validate dotted key -> value pairs (missing keys take defaults); raise ConfigError listing all problems."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in SCHEMA:
            problems.append(f"{path}: {k}: unknown key (did you mean {closest(k)}?)")
            continue
        key = SCHEMA[k]
        v, problem = _check(key, v)
        if problem:
            problems.append(f"{path}: {k}: {problem} (allowed: {allowed(key)})")
        values[k] = v
    if not problems:
        for key in SCHEMA.values():
            values.setdefault(key.name, key.default)
        for rule in RULES:
            problems += [f"{path}: {k}: {msg}" for k, msg in rule(values)]
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(name=name, path=path, values=values)


def load(path: str | Path) -> Config:
    """Load and validate a preset; its run name is the file's stem."""
    p = Path(path)
    if not p.is_file():
        presets = sorted(x.name for x in Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
        raise ConfigError(f"{p}: config file not found (presets: {', '.join(presets) or 'none'})")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: byte {e.object[e.start]:#04x} at offset {e.start} is not UTF-8 text; save the "
                          "file as UTF-8") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{p}: {where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if tree is None:
        raise ConfigError(f"{p}: the file is empty (no sections); give at least one key, e.g. `data: "
                          "{image_size: 16}`, or use configs/default.yaml for every default")
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections (allowed: "
                          f"{', '.join(sorted({k.split('.')[0] for k in SCHEMA}))})")
    return from_values(flatten(tree), name=p.stem, path=str(p))


