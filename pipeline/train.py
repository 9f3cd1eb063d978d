"""Training stage: quantization-aware training whose forward pass is the device's integer arithmetic.

The whole dataset stays in memory as uint8 tensors; each epoch is the clean set plus `train.aug_copies`
freshly augmented copies made a whole batch at a time (pipeline/augment.py). Every random draw comes
from a generator seeded by (seed, epoch, purpose), so an epoch is a pure function of the weights it
starts from: a checkpoint after each epoch (model, optimizer, scheduler, metrics) is enough to resume
a killed run bit-identically. `train.val_images` training images (a fixed class-stratified split) are
held out: each epoch is judged on them, never on the test set, which is evaluated once, after the last
epoch, with `int_eval` (the contract's integer path): the figure the report gives. `train.select: best_val`
keeps the weights of the epoch the validation curve ranks first instead of the last epoch's.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from contract.errors import UserError
from contract.spec import model_spec
from pipeline.augment import AugmentSpec, augment
from pipeline.data import validation_split
from pipeline.ema import WeightAverage
from pipeline.models import QModel, build_model
from pipeline.stages import data
from pipeline.stages import train as stage

CKPT = "checkpoint.pt"


def _generator(seed: int, epoch: int, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + purpose)


def _device(resolved: str, asked: str) -> torch.device:
    """The device the store key was made for (train.device resolved: cpu or cuda)."""
    if resolved == "cuda" and not torch.cuda.is_available():
        why = "an NVIDIA driver is installed (/dev/nvidiactl), but" if asked == "auto" else "but"
        raise UserError(f"train.device: {asked}: {why} torch {torch.__version__} finds no CUDA device "
                        "(allowed: cpu, or a torch build and driver that see the GPU)")
    return torch.device(resolved)


def _scheduler(cfg, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    kind = cfg["train.scheduler"]
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["train.epochs"])
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["train.step_size"], gamma=cfg["train.gamma"])
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=cfg["train.restart_period"], T_mult=cfg["train.restart_mult"])


def _checkpoint(path: Path, dev: torch.device, ctx) -> dict | None:
    """The interrupted attempt's state, or None when the file is damaged (then it is removed: the epochs it
    held are trained again; nothing stored is lost)."""
    try:
        state = torch.load(path, map_location=dev, weights_only=False)
        if not {"model", "opt", "sched", "history", "epoch"} <= set(state):
            raise ValueError("keys missing")
        return state
    except Exception as e:  # torch raises pickle, zip and EOF errors of many types for a damaged file
        ctx.log(f"{path} is damaged ({type(e).__name__}); removed it, training starts from epoch 1")
        path.unlink()
        return None


def make_optimizer(cfg, model: QModel) -> torch.optim.Optimizer:
    """Adam, with decoupled weight decay (AdamW; none at 0) on the weight layers only.

    Every weight layer is scale-invariant (codes follow the clip, ShiftNorm rescales each sample,
    the logits have their own learned scale), so decay does not shrink what the network computes:
    it keeps the weight norms from growing, which keeps the effective step size up late in training.
    The logit scale and the pruning mask (which has its own L1 term) are not decayed.
    """
    weights = [layer.weight for layer in model.layers]
    taken = {id(w) for w in weights}
    rest = [p for p in model.parameters() if id(p) not in taken]
    groups = [{"params": weights, "weight_decay": cfg["train.weight_decay"]},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg["train.lr"], fused=True)


def _augment_spec(cfg) -> AugmentSpec:
    return AugmentSpec(rotation_deg=cfg["train.rotation_deg"], translate=cfg["train.translate"],
                       scale_min=cfg["train.scale_min"], scale_max=cfg["train.scale_max"],
                       elastic_prob=cfg["train.elastic_prob"], elastic_alpha=cfg["train.elastic_alpha"],
                       elastic_sigma=cfg["train.elastic_sigma"])


@torch.no_grad()
def evaluate(model: QModel, images: torch.Tensor, labels: torch.Tensor, batch: int = 2000,
             int_eval: bool = True) -> tuple[float, np.ndarray]:
    """Accuracy and predictions over every image (no partial batch is dropped).

    int_eval=True runs the contract's integer path (the figure we report); False runs forward's
    exact-float path, which gives the same logits (tests/pipeline/test_models.py) in a fraction of the time.
    """
    model.eval()
    run = (lambda x: model.int_eval(x).logits) if int_eval else (lambda x: model(x, scaled=False))
    preds = torch.cat([run(images[i:i + batch]).argmax(1).cpu() for i in range(0, len(images), batch)])
    return float((preds == labels.cpu()).float().mean()), preds.numpy()


def epoch_images(cfg, epoch: int, clean: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """The clean set plus this epoch's augmented copies, uint8 [S,1,N,N]."""
    parts = [clean]
    if cfg["train.augment"]:
        g = _generator(cfg["train.seed"], epoch, 1)
        for _ in range(cfg["train.aug_copies"]):
            parts.append(augment(raw, clean.shape[-1], _augment_spec(cfg), g))
    return torch.cat(parts)


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: KL from the teacher's softened predictions to the student's, times T^2 so
    that its gradients keep their size as T changes."""
    soft = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean") * temperature ** 2


def make_step(cfg, model: QModel, teacher: QModel | None = None
              ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(logits, loss) of one batch, through torch.compile when `train.compile` is on. With a teacher, the loss
    is (1 - w) * cross-entropy + w * distill_loss (w: `train.distill_weight`).

    An FC step is ~60 small tensor ops, so Python and dispatch overhead dominate it on a CPU:
    inductor fuses the whole step into a few kernels, about 2.5x faster. A CNN step's time is in
    passes over its feature maps: only requant's two halves are compiled (fused loops), while the
    convolutions stay with oneDNN, which beats inductor's CPU depthwise convolutions. Compiled
    gradients round differently from eager ones, which is why the key is part of the train stage's.
    """
    smoothing = cfg["train.label_smoothing"]
    if teacher is not None:
        weight, temperature = cfg["train.distill_weight"], cfg["train.distill_temperature"]
        teacher.requires_grad_(False)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        if teacher is not None:
            with torch.no_grad():
                taught = teacher(x)
            loss = (1 - weight) * loss + weight * distill_loss(logits, taught, temperature)
        return logits, loss

    if cfg["train.compile"] and model.spec.kind == "fc" and (teacher is None or teacher.spec.kind == "fc"):
        return torch.compile(step, fullgraph=True, dynamic=False)
    for m in (model, teacher):
        if m is not None:
            m.fused_requant = bool(cfg["train.compile"])
    return step


def train_epoch(cfg, model: QModel, opt, epoch: int, x: torch.Tensor, y: torch.Tensor, bar: tqdm,
                step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                ema: WeightAverage | None = None) -> dict:
    model.train()
    g = _generator(cfg["train.seed"], epoch, 2)
    order = torch.randperm(len(x), generator=g).to(x.device)
    bs = cfg["train.batch_size"]
    steps = len(x) // bs  # drop the last partial batch: equal-size steps keep Adam's statistics even
    loss_sum = correct = seen = 0.0
    l1 = cfg["prune.l1"] if cfg["prune.keep"] and epoch < cfg["prune.epoch"] else 0.0
    for i in range(steps):
        idx = order[i * bs:(i + 1) * bs]
        logits, loss = step(x[idx], y[idx])
        if l1:
            loss = loss + l1 * model.prune_penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update()
        loss_sum += float(loss.detach()) * len(idx)
        correct += float((logits.detach().argmax(1) == y[idx]).sum())
        seen += len(idx)
        bar.update(1)
        if i % 20 == 0 or i == steps - 1:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


def run(ctx) -> dict:
    cfg = ctx.cfg
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(cfg.resolved("train.threads"))
    dev = _device(cfg.resolved("train.device"), cfg["train.device"])
    train_images, train_raw, train_labels = data.mnist_train(ctx.input("data"))
    test_images, test_labels = data.mnist_test(ctx.input("data"))
    fit, held = validation_split(train_labels, cfg["train.val_images"])
    fit = fit[:cfg["train.train_limit"] or None]
    clean = torch.from_numpy(train_images[fit]).unsqueeze(1).to(dev)
    raw = torch.from_numpy(train_raw[fit]).to(dev)
    labels = torch.from_numpy(train_labels[fit]).to(dev)
    val_x = torch.from_numpy(train_images[held]).unsqueeze(1).to(dev)
    val_y = torch.from_numpy(train_labels[held]).to(dev)
    test_x = torch.from_numpy(test_images).unsqueeze(1).to(dev)
    test_y = torch.from_numpy(test_labels).to(dev)

    spec = model_spec(cfg)
    torch.manual_seed(cfg["train.seed"])
    model = build_model(spec).to(dev)
    opt = make_optimizer(cfg, model)
    sched = _scheduler(cfg, opt)
    ema = WeightAverage(model, cfg["train.ema"]) if cfg["train.ema"] else None
    history: list[dict] = []
    best: dict | None = None  # train.select best_val: {"epoch", "val_acc", "model": state dict} so far
    start = 0
    ckpt = ctx.work / CKPT
    state = _checkpoint(ckpt, dev, ctx) if ckpt.is_file() else None
    if state is not None:  # a previous attempt at this exact entry was interrupted: carry on from it
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        if state.get("pruned"):
            model.apply_pruning(spec.prune_keep)
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history, start, best = state["history"], state["epoch"], state.get("best")
        ctx.log(f"resuming after epoch {start} from {ckpt}")

    epochs = cfg["train.epochs"]
    copies = 1 + (cfg["train.aug_copies"] if cfg["train.augment"] else 0)
    ctx.log(f"{spec.kind} {list(spec.widths)} {list(spec.formats)} on {dev}, {epochs} epochs of "
            f"{len(clean) * copies} samples")
    teacher = None
    if stage.TEACHER.key in ctx.inputs:   # eval mode throughout: its clips and weights stay as trained
        teacher = stage.trained_model(ctx.input(stage.TEACHER.key)).to(dev)
        ctx.log(f"distilling from the teacher {teacher.spec.kind} {list(teacher.spec.widths)} "
                f"{list(teacher.spec.formats)} (weight {cfg['train.distill_weight']}, "
                f"temperature {cfg['train.distill_temperature']})")
    step = make_step(cfg, model, teacher)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        clips = model.update_clipping()  # computed now, used by this very epoch
        x = epoch_images(cfg, epoch, clean, raw)
        y = labels.repeat(copies)
        t_aug = time.perf_counter() - t0
        steps = len(x) // cfg["train.batch_size"]
        with tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr,
                  disable=None, dynamic_ncols=True) as bar:
            stats = train_epoch(cfg, model, opt, epoch, x, y, bar, step, ema)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        if cfg["prune.keep"] and epoch + 1 == cfg["prune.epoch"]:
            model.apply_pruning(spec.prune_keep)
        model.update_clipping()
        pruned = bool(cfg["prune.keep"] and epoch + 1 >= cfg["prune.epoch"])
        with ema.swapped_in(model) if ema is not None else nullcontext():  # evaluate what would be exported
            val_acc = evaluate(model, val_x, val_y, int_eval=False)[0] if len(held) else None
            entropy = model.code_entropy()
            if cfg["train.select"] == "best_val" and (pruned or not cfg["prune.keep"]) \
                    and (best is None or val_acc > best["val_acc"]):
                best = {"epoch": epoch + 1, "val_acc": val_acc,
                        "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        row = {"epoch": epoch + 1, **stats, "val_acc": val_acc, "lr": lr,
               "clip": {k: [round(float(v), 6) for v in np.atleast_1d(c)] if np.ndim(c) else round(float(c), 6)
                        for k, c in clips.items()},
               "entropy": {k: round(v, 4) for k, v in entropy.items()},
               "seconds": round(time.perf_counter() - t0, 2), "augment_seconds": round(t_aug, 2)}
        history.append(row)
        ctx.log(f"epoch {epoch + 1}/{epochs}: loss {stats['train_loss']:.4f} train {stats['train_acc']:.4f} "
                + (f"val {val_acc:.4f} " if val_acc is not None else "") + f"lr {lr:.2e} {row['seconds']:.1f}s")
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "history": history, "epoch": epoch + 1, "ema": ema.state_dict() if ema is not None else None,
                    "best": best, "pruned": pruned}, tmp)
        os.replace(tmp, ckpt)
        if ctx.on_epoch is not None:   # after the checkpoint: an abandoned run can still carry on later
            ctx.on_epoch(epoch + 1, row)

    if ema is not None:
        ema.apply(model)
    model.update_clipping()
    last = None
    if best is not None and best["epoch"] != epochs:
        # the last epoch's figures beside the chosen one's, for the report only: the choice was made on validation
        last = {"val_accuracy_int": round(evaluate(model, val_x, val_y)[0], 6),
                "test_accuracy_int": round(evaluate(model, test_x, test_y)[0], 6)}
        model.load_state_dict(best["model"])   # the chosen epoch's weights as evaluated (the average, with ema)
        model.update_clipping()
        ctx.log(f"keeping epoch {best['epoch']} of {epochs}: validation {best['val_acc']:.4f}, the curve's best")
    val_acc = evaluate(model, val_x, val_y)[0] if len(held) else None
    test_acc, preds = evaluate(model, test_x, test_y)
    torch.save({"model": model.state_dict(), "spec": spec.to_dict()}, ctx.out / stage.MODEL)
    np.save(ctx.out / stage.PREDICTIONS, preds.astype(np.uint8))
    (ctx.out / stage.METRICS).write_text(json.dumps(history, indent=1) + "\n")
    layers = model.export_layers()
    weights = sum(int(np.prod(l["codes"].shape)) for l in layers)
    return {
        "test_accuracy_int": round(test_acc, 6),
        "test_errors": int(round((1 - test_acc) * len(test_y))),
        "test_images": len(test_y),
        "val_accuracy_int": round(val_acc, 6) if val_acc is not None else None,
        "val_images": len(held),
        "train_samples_per_epoch": len(clean) * copies,
        "epochs": epochs,
        "selected_epoch": best["epoch"] if best is not None else epochs,
        "last_epoch_accuracy_int": last,
        "weights": weights,
        "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in history])), 2) if history else None,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "best_epoch_val_acc": max((h["val_acc"] for h in history if h["val_acc"] is not None), default=None),
        "device": str(dev),
        "entropy_bits": model.code_entropy(),
    }
