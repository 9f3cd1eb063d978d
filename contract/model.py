"""The exported integer model (what the export stage's model.json holds) as typed dataclasses.

`from_export(QModel.export_model())` packs every layer's codes (contract/packing.py, CONTRACT §9) and
drops the unpacked codes, so every engine sees only what the device sees. `check` raises ValueError
naming the first thing that breaks the contract; `load`/`save` are the one way to read and write
model.json. numpy only.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from contract.formats import FORMAT_IDS, FORMATS
from contract.packing import pack, row_words
from contract.spec import ACC_LIMIT, KINDS, MAX_OUT_SHIFT, ModelSpec, layer_bound

FORMAT_VERSION = 3
LAYER_KINDS = ("fc", "conv", "dwconv", "pwconv")


@dataclass
class PackedLayer:
    name: str
    kind: str                         # fc | conv | dwconv | pwconv (1x1, CONTRACT §6)
    format: str                       # a name of contract.formats.FORMATS with an integer form
    words: np.ndarray                 # uint32 [n_out * row_words], rows word aligned
    row_words: int
    out_shifts: np.ndarray            # int64 [n_out] in [0, MAX_OUT_SHIFT]
    n_in: int                         # terms per output (conv: 9 * input channels per group; pwconv: C)
    n_out: int
    groups: int
    in_shape: tuple[int, ...]         # fc: (n_in,); conv: (C, H, W)
    out_shape: tuple[int, ...]        # fc: (n_out,); conv: (n_out, H', W') after the optional pool
    pool: bool                        # 2x2 max-pool after the conv
    requant: bool                     # ShiftNorm after it (every layer but the last)
    bound: int = 0                    # worst-case |accumulator| (CONTRACT §3)
    flatten_from: tuple[int, ...] | None = None   # the first fc after convs: the [C, H, W] it flattens

    def __post_init__(self) -> None:
        self.in_shape, self.out_shape = tuple(int(v) for v in self.in_shape), tuple(int(v) for v in self.out_shape)
        if self.flatten_from is not None:
            self.flatten_from = tuple(int(v) for v in self.flatten_from)
        self.words = np.asarray(self.words, dtype=np.uint32)
        self.out_shifts = np.asarray(self.out_shifts, dtype=np.int64)
        for f in ("row_words", "n_in", "n_out", "groups", "bound"):
            setattr(self, f, int(getattr(self, f)))
        self.pool, self.requant = bool(self.pool), bool(self.requant)


@dataclass
class PackedModel:
    kind: str                         # fc | cnn
    image_size: int                   # N of the N x N uint8 input
    input_zero: int                   # Z in x0 = (p >> 1) - Z
    num_classes: int
    layers: list[PackedLayer]
    target: str | None = None         # the chip it was exported for (set by the export stage)
    sizes: dict[str, int] = field(default_factory=dict)   # buffer and flash sizes (engine/header.py layout)
    # CNN: the streaming driver's start (CONTRACT §6): a shift guess per conv layer but the last, then the C
    # channels in the order a pass takes them; empty: guesses 0, channels in order. It sets only how long a run
    # takes, never its results.
    stream_start: list[int] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.image_size, self.input_zero, self.num_classes = (int(self.image_size), int(self.input_zero),
                                                              int(self.num_classes))
        self.layers = [lay if isinstance(lay, PackedLayer) else PackedLayer(**lay) for lay in self.layers]

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, (tuple, list)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v
        return plain(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PackedModel":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"model: unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(names))})")
        return cls(**d)

    def check(self) -> None:
        """Raise ValueError naming the first thing in the model that breaks the contract."""
        n, z = self.image_size, self.input_zero
        if n < 1 or not 0 <= z <= 127:
            _fail("model", f"image_size must be >= 1 and input_zero in [0, 127]; got {n}, {z}")
        if self.kind not in KINDS or not self.layers:
            _fail("model", f"kind must be fc or cnn with at least one layer; got {self.kind!r}")
        shape: tuple[int, ...] = (1, n, n) if self.kind == "cnn" else (n * n,)
        for i, lay in enumerate(self.layers):
            if lay.kind == "fc" and len(shape) == 3:
                shape = (int(np.prod(shape)),)                  # channel-major flatten (CONTRACT §6)
            shape = _check_layer(lay, shape, i == len(self.layers) - 1)
        if shape != (self.num_classes,) or self.layers[-1].kind != "fc":
            _fail("model", f"the last layer must be fc with num_classes = {self.num_classes} outputs; got {shape}")
        self.stream_start = [int(v) for v in self.stream_start]
        start, pos = self.stream_start, 0
        for run in stream_runs(self.layers):
            nh, ch = len(run) - 1, run[0].n_out
            part = start[pos:pos + nh + ch] if nh else []
            if start and (len(part) != (nh + ch if nh else 0) or not all(0 <= g <= 24 for g in part[:nh])
                          or sorted(part[nh:]) != (list(range(ch)) if nh else [])):
                _fail("model", f"stream_start must be empty or, for each streamed run of two or more conv layers, "
                      f"its {nh} shifts in [0, 24], then the channels 0 to {ch - 1} in some order; got {start}")
            pos += len(part)
        if start and pos != len(start):
            _fail("model", f"stream_start has {len(start)} entries; its streamed runs take {pos}")


def stream_runs(layers: list[PackedLayer]) -> list[list[PackedLayer]]:
    """The conv layers that stream channel by channel (CONTRACT §6), as runs: pw layers, which mix the
    channels, end one run and start the next and belong to none."""
    runs: list[list[PackedLayer]] = [[]]
    for lay in layers:
        if lay.kind == "pwconv":
            runs.append([])
        elif lay.kind != "fc":
            runs[-1].append(lay)
    return [r for r in runs if r]


def plain_start(runs: list[list[PackedLayer]]) -> list[int]:
    """The stream_start part of these runs that carries no knowledge: for each run of two or more layers,
    guesses 0 and its channels in order (what the C engine does with no start)."""
    return [g for run in runs if len(run) > 1 for g in [0] * (len(run) - 1) + list(range(int(run[0].n_out)))]


def _fail(where: str, msg: str) -> None:
    raise ValueError(f"model check: {where}: {msg}")


def _check_layer(lay: PackedLayer, in_shape: tuple[int, ...], last: bool) -> tuple[int, ...]:
    """Check one packed layer against its input shape; returns its output shape (per image)."""
    name, fmt, kind = lay.name, lay.format, lay.kind
    if fmt not in FORMAT_IDS:
        _fail(f"layer {name}", f"format must be one of {', '.join(FORMAT_IDS)}; got {fmt!r}")
    n_in, n_out, groups = lay.n_in, lay.n_out, lay.groups
    if kind == "fc":
        if in_shape != (n_in,) or n_out < 1:
            _fail(f"layer {name}", f"fc expects {n_in} inputs and n_out >= 1; gets {in_shape}, n_out {n_out}")
        out: tuple[int, ...] = (n_out,)
    elif kind in ("conv", "dwconv"):
        if len(in_shape) != 3 or groups < 1 or in_shape[0] % groups or n_out % groups:
            _fail(f"layer {name}", f"conv input must be [C, H, W] with C and n_out divisible by groups "
                  f"{groups}; got {in_shape}, n_out {n_out}")
        c, h, w = in_shape
        if n_in != 9 * (c // groups) or h < 3 or w < 3:
            _fail(f"layer {name}", f"n_in must be 9 * {c // groups} and the map at least 3x3; "
                  f"got n_in {n_in}, map {h}x{w}")
        out = (n_out, h - 2, w - 2)
        if lay.pool:
            out = (n_out, out[1] // 2, out[2] // 2)
        if min(out[1:]) < 1:
            _fail(f"layer {name}", f"output map {out} is empty")
    elif kind == "pwconv":
        if len(in_shape) != 3 or groups != 1 or n_in != in_shape[0] or n_out < 1 or lay.pool:
            _fail(f"layer {name}", f"pwconv input must be [C, H, W] with n_in = C, groups 1, n_out >= 1 and no "
                  f"pool; got {in_shape}, n_in {n_in}, groups {groups}, n_out {n_out}, pool {lay.pool}")
        out = (n_out, *in_shape[1:])
    else:
        _fail(f"layer {name}", f"kind must be one of {', '.join(LAYER_KINDS)}; got {kind!r}")
    if kind == "fc" and lay.pool:
        _fail(f"layer {name}", "an fc layer cannot pool")
    if lay.out_shape != out:
        _fail(f"layer {name}", f"out_shape {lay.out_shape} does not follow from the input {in_shape}")
    if lay.requant == last:
        _fail(f"layer {name}", "every layer but the last must requant, and the last must not")
    rw = row_words(n_in, fmt)
    if lay.row_words != rw or lay.words.shape != (n_out * rw,):
        _fail(f"layer {name}", f"words must be uint32 [{n_out} * {rw}] with row_words {rw}; got "
              f"shape {lay.words.shape}, row_words {lay.row_words}")
    k = lay.out_shifts
    if k.shape != (n_out,) or k.min() < 0 or k.max() > MAX_OUT_SHIFT:
        _fail(f"layer {name}", f"out_shifts must be {n_out} integers in [0, {MAX_OUT_SHIFT}]; got {k!r}")
    bound = layer_bound(n_in, fmt, int(k.max()))
    if bound > ACC_LIMIT:
        _fail(f"layer {name}", f"accumulator bound {n_in}*127*{FORMATS[fmt].max_abs_code}*2^{int(k.max())} "
              f"= {bound} exceeds 2^31-2^24 (CONTRACT §3)")
    return out


def from_export(export: dict[str, Any]) -> PackedModel:
    """QModel.export_model()'s dict with each layer's codes packed into `words` and `row_words`."""
    layers = []
    for lay in export["layers"]:
        codes = np.asarray(lay["codes"])
        words, rw = pack(codes.reshape(codes.shape[0], -1), lay["format"])
        layers.append(PackedLayer(**{k: v for k, v in lay.items() if k != "codes"}, words=words, row_words=rw))
    return PackedModel(**{k: v for k, v in export.items() if k != "layers"}, layers=layers)


def save(model: PackedModel, path: Path) -> None:
    """model.json: sorted keys, no timestamps or paths, so the same model gives the same bytes."""
    Path(path).write_text(json.dumps(model.to_dict(), sort_keys=True, indent=1) + "\n")


def load(path: Path) -> PackedModel:
    """Read a model.json written by `save` (arrays come back as numpy, shapes as tuples) and check it."""
    d = json.loads(Path(path).read_text())
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {d.get('format_version')!r}; this code reads {FORMAT_VERSION} "
                         "(export the model again)")
    model = PackedModel.from_dict(d)
    model.check()
    return model


def placeholder(spec: ModelSpec) -> PackedModel:
    """The packed model of the spec's shape with every code the same: what the export stage would make of a
    trained model of that spec, byte for byte in size (layout, header, firmware), so whether it fits a chip is
    known before training. A per_output layer gets shift 1 on every row, so its shift bytes count as a trained
    one's do; pruning (prune.keep) only shrinks the trained model."""
    geo = spec.geometry()
    layers = []
    for i, (g, fmt) in enumerate(zip(geo, spec.layer_formats())):
        shift = 1 if spec.scaling == "per_output" else 0
        words, rw = pack(np.full((g["n_out"], g["n_in"]), FORMATS[fmt].codes[0], dtype=np.int64), fmt)
        layers.append(PackedLayer(**g, format=fmt, words=words, row_words=rw,
                                  out_shifts=np.full(g["n_out"], shift, dtype=np.int64), requant=i < len(geo) - 1,
                                  bound=layer_bound(g["n_in"], fmt, shift),
                                  flatten_from=geo[i - 1]["out_shape"] if i and g["kind"] == "fc" and
                                  geo[i - 1]["kind"] != "fc" else None))
    return PackedModel(kind=spec.kind, image_size=spec.image_size, input_zero=spec.input_zero,
                       num_classes=spec.num_classes, layers=layers)
