"""pipeline/models.py: QAT forward == int_eval == a plain-Python oracle of engine/CONTRACT.md."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.models import build_model
from contract.formats import FORMATS
from contract.spec import ModelSpec


# ---- a plain integer oracle that reads only export_model() ------------------------------------
def _requant(y: np.ndarray) -> tuple[np.ndarray, int]:
    m = int(y.max()) if y.size else 0
    s = max(0, m.bit_length() - 7)
    return np.minimum((y + ((1 << s) >> 1)) >> s, 127), s


def oracle(model: dict, image: np.ndarray) -> tuple[list[int], list[np.ndarray], list[int]]:
    """CONTRACT.md for one image, in Python ints / int64 numpy with explicit loops."""
    n = model["image_size"]
    x = (image.astype(np.int64).reshape(1, n, n) >> 1) - model["input_zero"]
    acts, shifts = [], []
    for lay in model["layers"]:
        w, k = lay["codes"].astype(np.int64), lay["out_shifts"]
        if lay["kind"] in ("conv", "dwconv"):
            c_out, (_, h, wd) = w.shape[0], x.shape
            acc = np.zeros((c_out, h - 2, wd - 2), dtype=np.int64)
            for c in range(c_out):
                src = [0] if lay["kind"] == "conv" else [c]
                for i in range(h - 2):
                    for j in range(wd - 2):
                        acc[c, i, j] = sum(int(x[s, i + dy, j + dx]) * int(w[c, 0, dy, dx])
                                           for s in src for dy in range(3) for dx in range(3))
            y = np.maximum(acc, 0) << k.reshape(-1, 1, 1)
            if lay["pool"]:
                ph, pw = y.shape[1] // 2, y.shape[2] // 2
                y = y[:, :2 * ph, :2 * pw].reshape(c_out, ph, 2, pw, 2).max(axis=(2, 4))
            x, s = _requant(y)
            acts.append(x)
            shifts.append(s)
        elif lay["kind"] == "pwconv":
            acc = np.array([[[sum(int(x[c, i, j]) * int(w[o, c, 0, 0]) for c in range(x.shape[0]))
                              for j in range(x.shape[2])] for i in range(x.shape[1])] for o in range(w.shape[0])],
                           dtype=np.int64)
            x, s = _requant(np.maximum(acc, 0) << k.reshape(-1, 1, 1))
            acts.append(x)
            shifts.append(s)
        else:
            v = x.reshape(-1)
            acc = np.array([sum(int(a) * int(b) for a, b in zip(v, row)) for row in w], dtype=np.int64)
            if not lay["requant"]:
                logits = [int(a) * 2 ** int(kk) for a, kk in zip(acc, k)]
                assert max(abs(v) for v in logits) < 2**31
                return logits, acts, shifts
            x, s = _requant(np.maximum(acc, 0) << k)
            acts.append(x)
            shifts.append(s)
    raise AssertionError("no final layer")


def argmax_lowest(v) -> int:
    best = 0
    for i in range(1, len(v)):
        if v[i] > v[best]:
            best = i
    return best


SPECS = {
    "fc_4bitsym": ModelSpec(image_size=8, widths=(12, 10), formats=("4bitsym",)),
    "fc_mixed_per_output": ModelSpec(image_size=8, widths=(16, 9, 7), formats=("ternary", "fp130", "nf4", "binary"),
                                     scaling="per_output", clip="prop", input_zero=0),
    "fc_8bit_2bit": ModelSpec(image_size=10, widths=(20, 6), formats=("8bit", "2bitsym", "4bit"), norm="lin"),
    "fc_balanced": ModelSpec(image_size=8, widths=(8, 8), formats=("binarybalanced",), scaling="per_output",
                             norm="batchnorm", input_zero=127),
    "cnn16": ModelSpec(kind="cnn", image_size=16, cnn_channels=3, widths=(8,),
                       formats=("8bit", "8bit", "fp130", "2bitsym", "4bitsym"), scaling="per_output"),
    "cnn13": ModelSpec(kind="cnn", image_size=13, cnn_channels=6, widths=(8, 6),
                       formats=("4bit", "nf4", "8bit", "ternary", "4bitsym", "binary")),
    "cnn_mix": ModelSpec(kind="cnn", image_size=14, cnn_channels=4, mix=True, widths=(8,),
                         formats=("fp130", "8bit", "4bitsym", "fp130", "2bitsym", "4bitsym"), scaling="per_output"),
}


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    imgs[0] = 0                                            # blank image
    imgs[1] = 255                                          # saturated image
    imgs[2] = (imgs[2] > 200).to(torch.uint8) * 255        # sparse strokes, like MNIST
    return imgs


def _randomize(model, seed: int) -> None:
    """Random weights; per-output models get row magnitudes spread over 2 decades, so shifts vary."""
    g = torch.Generator().manual_seed(seed)
    spread = 1.0 if model.spec.scaling == "per_output" else 0.2
    with torch.no_grad():
        for layer in model.layers:
            w = layer.weight
            rows = torch.logspace(-spread, spread, w.shape[0])[torch.randperm(w.shape[0], generator=g)]
            w.copy_(torch.randn(w.shape, generator=g) * rows.view(-1, *[1] * (w.dim() - 1)))
    model.update_clipping()


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_int_eval_and_oracle_agree(name, seed):
    spec = SPECS[name]
    torch.manual_seed(seed)
    model = build_model(spec)
    _randomize(model, seed)
    x = _images(6, spec.image_size, seed)
    res = model.int_eval(x)
    out = model(x)
    assert res.logits.dtype == torch.int64 and res.logits.shape == (6, spec.num_classes)
    # forward value is the integer logits times one positive constant (exact for these small layers)
    assert torch.equal(torch.round(out.double() / model.logit_scale).long(), res.logits)
    assert torch.equal(out.argmax(1), res.logits.argmax(1))
    exact = model(x, scaled=False)                          # the per-epoch test curve's path
    assert torch.equal(exact, exact.round()) and torch.equal(exact.to(torch.int64), res.logits)
    exported = model.export_model()
    for b in range(6):
        logits, acts, shifts = oracle(exported, x[b, 0].numpy())
        assert res.logits[b].tolist() == logits
        assert argmax_lowest(logits) == int(res.logits[b].argmax())
        assert [int(s[1][b]) for s in res.shifts] == shifts
        for (lname, a), want in zip(res.acts[1:-1], acts):
            assert np.array_equal(a[b].reshape(want.shape).numpy(), want), lname
    assert [n for n, _ in res.acts] == ["input"] + model.layer_names()
    for _, a in res.acts[1:-1]:
        assert 0 <= int(a.min()) and int(a.max()) <= 127


def test_argmax_ties_go_to_lowest_index():
    assert torch.argmax(torch.tensor([3, 7, 7, 1])) == 1 and argmax_lowest([3, 7, 7, 1]) == 1


@pytest.mark.parametrize("name", ["fc_mixed_per_output", "cnn16", "fc_balanced"])
def test_all_zero_input_no_nan(name):
    spec = SPECS[name]
    torch.manual_seed(0)
    model = build_model(replace(spec, input_zero=0))          # x0 == 0 everywhere
    x = torch.zeros(4, 1, spec.image_size, spec.image_size, dtype=torch.uint8)
    out = model(x)
    assert torch.isfinite(out).all() and torch.equal(model.int_eval(x).logits, torch.zeros(4, 10, dtype=torch.int64))
    torch.nn.functional.cross_entropy(out, torch.arange(4)).backward()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_gradients_reach_every_layer():
    torch.manual_seed(0)
    model = build_model(SPECS["cnn16"])
    x = _images(8, 16, 3)
    torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 10).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_float64_path_for_big_layers_is_exact():
    spec = ModelSpec(image_size=28, widths=(1100, 10), formats=("8bit",))   # fc2: 1100*127*128 > 2^24
    torch.manual_seed(0)
    model = build_model(spec)
    assert model.layers[1].dtype == torch.float64 and model.layers[0].dtype == torch.float32
    x = _images(3, 28, 0)
    res = model.int_eval(x)
    assert torch.equal(torch.round(model(x).double() / model.logit_scale).long(), res.logits)
    assert torch.equal(model(x, scaled=False).to(torch.int64), res.logits)


def test_validate_messages_name_keys():
    assert ModelSpec().validate() == []
    assert any(p.startswith("quant.formats: unknown format 'int3'") for p in
               ModelSpec(formats=("4bitsym", "int3", "4bitsym", "4bitsym")).validate())
    big = ModelSpec(widths=(200000, 10), formats=("8bit",)).validate()
    assert len(big) == 1 and big[0].startswith("model.widths: layer fc2 has 200000 inputs") and "131072" in big[0]
    assert ModelSpec(widths=(200000, 10), formats=("binary",)).validate() == []
    assert ModelSpec(widths=(1100, 10), formats=("8bit",), scaling="per_output")  \
        .validate()[0].startswith("model.widths:")
    cases = {
        "model.kind": ModelSpec(kind="rnn"),
        "data.image_size": ModelSpec(kind="cnn", image_size=10, cnn_channels=4, widths=(8,)),
        "model.cnn_channels": ModelSpec(kind="cnn", widths=(8,)),
        "model.mix": ModelSpec(mix=True),
        "model.widths": ModelSpec(widths=(8,)),
        "quant.scaling": ModelSpec(scaling="per_row"),
        "quant.clip": ModelSpec(clip="max"),
        "quant.prop_scale": ModelSpec(prop_scale=0.0),
        "quant.norm": ModelSpec(norm="layernorm"),
        "quant.norm_eps": ModelSpec(norm_eps=float("nan")),
        "model.input_zero": ModelSpec(input_zero=128),
        "prune.keep": ModelSpec(prune_keep=65),
        "prune.l1": ModelSpec(prune_l1=-1.0),
        "prune.epoch": ModelSpec(prune_epoch=-2),
    }
    for key, spec in cases.items():
        problems = spec.validate()
        assert problems and problems[0].startswith(key + ":") and "(allowed:" in problems[0], (key, problems)
    assert ModelSpec(formats=("8bit", "4bitsym")).validate()[0].startswith("quant.formats: 2 names for 4")
    assert ModelSpec(kind="cnn", image_size=12, cnn_channels=4, widths=(8,)).validate() == []
    assert "(conv1, dw1, pw1, dw2, then fc layers)" in ModelSpec(kind="cnn", cnn_channels=4, mix=True, widths=(8,),
                                                                 formats=("8bit",) * 3).validate()[0]
    with pytest.raises(ValueError, match="quant.formats"):
        build_model(ModelSpec(formats=("bogus",)))


def test_none_format_trains_but_refuses_integer_eval():
    torch.manual_seed(0)
    model = build_model(ModelSpec(image_size=8, widths=(8, 8), formats=("none", "4bitsym", "none")))
    out = model(_images(3, 8, 0))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="'none'"):
        model.int_eval(_images(3, 8, 0))
    with pytest.raises(ValueError, match="'none'"):
        model.export_layers()


@pytest.mark.parametrize("name", list(SPECS))
def test_export_layers(name):
    spec = SPECS[name]
    torch.manual_seed(0)
    model = build_model(spec)
    layers = model.export_layers()
    assert [l["name"] for l in layers] == model.layer_names()
    for lay, fmt in zip(layers, spec.layer_formats()):
        assert lay["format"] == fmt and lay["codes"].dtype == np.int64
        assert set(np.unique(lay["codes"]).tolist()) <= set(FORMATS[fmt].codes)
        assert lay["out_shifts"].shape == (lay["n_out"],) and 0 <= lay["out_shifts"].min() <= lay["out_shifts"].max() <= 7
        assert lay["bound"] <= 2**31 - 2**24
    assert [l["requant"] for l in layers] == [True] * (len(layers) - 1) + [False]
    assert set(model.code_entropy()) == set(model.layer_names())
    assert set(model.update_clipping()) == set(model.layer_names())
    if spec.kind == "cnn":
        n = len(spec.conv_names())
        c, h, w = layers[n - 1]["out_shape"]
        assert layers[n]["flatten_from"] == (c, h, w) and layers[n]["n_in"] == c * h * w
    if spec.mix:
        assert [(l["name"], l["kind"], l["n_in"]) for l in layers[1:3]] == [("dw1", "dwconv", 9), ("pw1", "pwconv", 4)]
        assert layers[2]["codes"].shape == (4, 4, 1, 1) and layers[2]["out_shape"] == layers[1]["out_shape"]


def test_same_seed_same_model():
    models = []
    for _ in range(2):
        torch.manual_seed(42)
        models.append(build_model(SPECS["cnn16"]))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,keep", [("cnn16", 2), ("cnn_mix", 3), ("fc_mixed_per_output", 5), ("fc_4bitsym", 7)])
def test_pruning_folds_exactly(name, keep):
    spec = replace(SPECS[name], prune_keep=keep)
    torch.manual_seed(0)
    model = build_model(spec)
    _randomize(model, 0)
    x = _images(5, spec.image_size, 1)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(5)) + model.prune_penalty()
    loss.backward()
    assert model.mask.grad is not None and model.mask.grad.abs().sum() > 0
    with torch.no_grad():
        model.mask.copy_(torch.linspace(1.0, 0.1, model.mask.numel()).flip(0))   # keep the last units
    kept = model.apply_pruning()
    n = model.mask.numel()
    assert kept == list(range(n - keep, n)) and float(model.prune_penalty()) == 0.0
    model.update_clipping()
    exported = model.export_model()
    first = exported["layers"][0]
    assert first["codes"].shape[0] == keep
    res = model.int_eval(x)
    assert torch.equal(model(x).argmax(1), res.logits.argmax(1))
    for b in range(5):
        assert oracle(exported, x[b, 0].numpy())[0] == res.logits[b].tolist()
    if spec.kind == "cnn":
        n = len(spec.conv_names())
        fc1 = exported["layers"][n]
        assert exported["layers"][1]["groups"] == keep and fc1["flatten_from"][0] == keep
        assert fc1["codes"].shape[1] == keep * int(np.prod(fc1["flatten_from"][1:]))
        if spec.mix:                                  # pw1: kept rows and kept input columns
            assert exported["layers"][2]["codes"].shape[:2] == (keep, keep) and exported["layers"][2]["n_in"] == keep
    else:
        assert exported["layers"][1]["codes"].shape[1] == keep
