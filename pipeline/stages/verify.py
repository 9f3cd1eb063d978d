"""verify: PyTorch's integer path, numba and C on every test image, every layer identical."""
from __future__ import annotations

from pipeline.stage import Stage

STAGE = Stage(
    name="verify",
    doc="Run PyTorch int-eval, numba and C on every test image; every layer must be identical",
    module="pipeline.verify",
    inputs=("data", "train", "export", "library"),
)
