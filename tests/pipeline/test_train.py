"""Training: deterministic, resumable, reporting the integer path's accuracy."""
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from contract.errors import UserError
from pipeline import config
from pipeline.ema import WeightAverage
from pipeline.models import build_model
from contract.spec import model_spec
from pipeline.train import _checkpoint, _device, make_optimizer

from tests.conftest import ROOT, TINY, entry


def weights(plan):
    return torch.load(entry(plan, "train") / "model.pt")["model"]


@pytest.mark.mnist
def test_tiny_run_reports_integer_accuracy(tiny_pipeline):
    train = entry(tiny_pipeline("train"), "train")
    summary = json.loads((train / "summary.json").read_text())
    assert summary["test_images"] == 10000
    assert 0.3 < summary["test_accuracy_int"] <= 1.0  # 64 steps on 512 images: far above chance
    history = json.loads((train / "metrics.json").read_text())
    assert len(history) == 2 and {"train_loss", "val_acc", "lr", "clip", "entropy"} <= set(history[0])
    assert not any("test" in k for h in history for k in h)       # epochs are judged on held-out training images
    assert summary["val_images"] == 5000 and 0.3 < summary["val_accuracy_int"] <= 1.0


@pytest.mark.mnist
def test_same_config_same_weights(tiny_pipeline, tmp_path):
    cfg = config.load(TINY)
    a = weights(tiny_pipeline("train"))
    b = weights(tiny_pipeline("train", root=tmp_path))  # trained again, in a store of its own
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = weights(tiny_pipeline("train", cfg.replace(**{"train.seed": 1})))
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.mnist
def test_best_val_keeps_the_weights_of_the_epoch_the_curve_ranks_first(tiny_pipeline, tmp_path, monkeypatch):
    from pipeline import train

    cfg = config.load(TINY).replace(**{"train.epochs": 3, "train.select": "best_val", "train.ema": 0.9})
    scripted, seen = iter([0.5, 0.9, 0.7]), []   # the curve peaks at epoch 2 of 3

    def evaluate(model, images, labels, batch=2000, int_eval=True):
        if int_eval:
            return real(model, images, labels, batch, int_eval)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})   # what epoch len(seen) evaluated
        return next(scripted), None
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", evaluate)
    plan = tiny_pipeline("train", cfg, root=tmp_path)
    summary = json.loads((entry(plan, "train") / "summary.json").read_text())
    assert summary["selected_epoch"] == 2 and set(summary["last_epoch_accuracy_int"]) == {
        "val_accuracy_int", "test_accuracy_int"}
    kept = weights(plan)
    assert len(seen) == 3 and all(torch.equal(kept[k], seen[1][k]) for k in kept if k in seen[1])
    assert any(not torch.equal(kept[k], seen[2][k]) for k in kept)   # not the last epoch's


@pytest.mark.mnist
def test_killed_training_resumes_to_the_same_weights(tiny_pipeline, tmp_path):
    # with a weight average and a best epoch so far, whose states the checkpoint must carry too
    text = (TINY.read_text().replace("epochs: 2", "epochs: 4").replace("train_limit: 512", "train_limit: 3000")
            + "  ema: 0.9\n  select: best_val\n")
    cfg_path = tmp_path / "resume.yaml"
    cfg_path.write_text(text)
    cfg = config.load(cfg_path)
    plan = tiny_pipeline("data", cfg, root=tmp_path / "killed")
    ckpt = plan.store.work_dir("train", plan.keys["train"]) / "checkpoint.pt"
    env = {**os.environ, "BITMCU_ARTIFACTS": str(tmp_path / "killed")}
    p = subprocess.Popen([sys.executable, "-m", "doit", f"cfg={cfg_path}", "train"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ckpt.exists(), "training never wrote a checkpoint"
    assert not plan.store.has("train", plan.keys["train"])
    r = subprocess.run([sys.executable, "-m", "doit", f"cfg={cfg_path}", "train"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming after epoch" in r.stdout
    resumed = weights(plan)
    straight = weights(tiny_pipeline("train", cfg))  # trained without a break, in the shared store
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k


def test_weight_average_swaps_in_and_back_exactly():
    torch.manual_seed(0)
    model = build_model(model_spec(config.load(TINY)))
    ema = WeightAverage(model, 0.75)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()                                   # avg = 0.75 * w0 + 0.25 * (w0 + 1)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped_in(model):
        w = model.layers[0].weight
        assert torch.allclose(w, before["layers.0.weight"] + 0.25)
        assert not torch.equal(model.layers[0].clip, trained["layers.0.clip"])   # clips follow the average
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_weight_decay_shrinks_only_the_weight_layers():
    cfg = config.load(TINY).replace(**{"train.weight_decay": 0.1, "prune.keep": 4, "prune.epoch": 2, "train.lr": 0.01})
    torch.manual_seed(0)
    model = build_model(model_spec(cfg))
    opt = make_optimizer(cfg, model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert {"layers.0.weight", "logit_log_scale", "mask"} <= set(before)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)                # Adam's own step is 0: only the decay acts
    opt.step()
    for k, p in model.named_parameters():
        if k.startswith("layers."):
            assert torch.allclose(p, before[k] * (1 - 0.01 * 0.1)), k
        else:
            assert torch.equal(p, before[k]), k


def test_cuda_asked_for_without_a_gpu_is_a_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="train.device: cuda: but torch .* finds no CUDA device"):
        _device("cuda", "cuda")
    with pytest.raises(UserError, match=r"train.device: auto: an NVIDIA driver is installed \(/dev/nvidiactl\)"):
        _device("cuda", "auto")
    assert _device("cpu", "auto").type == "cpu"


def test_a_damaged_checkpoint_is_removed_and_training_starts_over(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    lines = []
    assert _checkpoint(ckpt, torch.device("cpu"), SimpleNamespace(log=lines.append)) is None
    assert not ckpt.exists() and "is damaged" in lines[0] and "starts from epoch 1" in lines[0]


@pytest.mark.cuda
@pytest.mark.mnist
def test_training_runs_on_a_cuda_device_and_its_model_verifies(tiny_pipeline, tmp_path):
    cfg = config.load(TINY).replace(**{"train.device": "cuda"})
    plan = tiny_pipeline("verify", cfg, root=tmp_path)
    summary = json.loads((entry(plan, "train") / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and 0.3 < summary["test_accuracy_int"] <= 1.0
    verify = json.loads((entry(plan, "verify") / "summary.json").read_text())
    assert all(v == 0 for v in verify["mismatches"].values())  # torch, numba and C agree on the GPU's weights
