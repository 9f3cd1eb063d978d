"""train: quantization-aware training (or a BitNetMCU checkpoint's conversion); readers of its entry."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from contract.spec import SPEC_KEYS
from pipeline.stage import PresetInput, Stage

MODEL, METRICS, PREDICTIONS = "model.pt", "metrics.json", "test_predictions.npy"

KEYS = tuple(SPEC_KEYS) + (
    "train.epochs", "train.batch_size", "train.lr", "train.scheduler", "train.step_size", "train.gamma",
    "train.restart_period", "train.restart_mult", "train.seed", "train.val_images", "train.train_limit", "train.augment",
    "train.aug_copies", "train.rotation_deg", "train.translate", "train.scale_min", "train.scale_max",
    "train.elastic_prob", "train.elastic_alpha", "train.elastic_sigma", "train.compile",
    "train.label_smoothing", "train.ema", "train.select", "train.weight_decay", "train.device", "train.threads",
    "train.distill_weight", "train.distill_temperature",
)
# The teacher's trained model; trained as this config trains (device, threads), on images of the same size.
TEACHER = PresetInput("train.teacher", "train", inherit=("train.device", "train.threads"),
                      same=("data.image_size",))

STAGE = Stage(
    name="train",
    doc="Quantization-aware training on the device's integer arithmetic; resumable, deterministic",
    module="pipeline.train",
    keys=(*KEYS, "import.src"),
    inputs=("data",),
    outputs=(MODEL, METRICS, PREDICTIONS),
    variants=(("import.src", "pipeline.bitnetmcu"),),  # convert a BitNetMCU checkpoint instead
    preset_inputs=(TEACHER,),
)


def trained_model(entry: Path) -> Any:
    """The trained QModel (eval mode, CPU). Imports torch."""
    import torch

    from contract.spec import ModelSpec
    from pipeline.models import build_model

    state = torch.load(entry / MODEL, map_location="cpu", weights_only=False)
    model = build_model(ModelSpec.from_dict(state["spec"]))
    model.load_state_dict(state["model"])
    return model.eval()


def metrics(entry: Path) -> list[dict[str, Any]]:
    """Per-epoch figures (empty for a converted checkpoint)."""
    return json.loads((entry / METRICS).read_text())


def predictions(entry: Path) -> np.ndarray:
    return np.load(entry / PREDICTIONS)
