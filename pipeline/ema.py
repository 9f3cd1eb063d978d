"""Exponential moving average of the trained weights (`train.ema`), evaluated and exported instead of
the last step's weights.

Late in QAT single steps still flip codes near rounding boundaries, so the last step's model is a
noisy sample; the average is the centre those steps wander around. The pruning mask is left out:
its frozen 0/1 values must stay exact.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from pipeline.models import QModel


class WeightAverage:
    def __init__(self, model: QModel, decay: float) -> None:
        self.decay = decay
        self.params = [p for name, p in model.named_parameters() if name != "mask"]
        self.avg = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """avg <- decay * avg + (1 - decay) * weights; call after every optimizer step."""
        torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def _load(self, model: QModel, values: list[torch.Tensor]) -> None:
        for p, v in zip(self.params, values):
            p.copy_(v)
        model.update_clipping()

    @contextmanager
    def swapped_in(self, model: QModel) -> Iterator[None]:
        """The model holds the averaged weights (and clips computed from them) inside the block."""
        saved = [p.detach().clone() for p in self.params]
        clips = [layer.clip.clone() for layer in model.layers]
        self._load(model, self.avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, saved):
                    p.copy_(v)
                for layer, c in zip(model.layers, clips):
                    layer.clip.copy_(c)

    def apply(self, model: QModel) -> None:
        """Make the averaged weights the model's for good (end of training)."""
        self._load(model, self.avg)

    def state_dict(self) -> list[torch.Tensor]:
        return [a.clone() for a in self.avg]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        for a, s in zip(self.avg, state):
            a.copy_(s)
