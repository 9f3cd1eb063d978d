"""Will a config's model fit its chip? Decided before any training, with the firmware stage's own gate.

The model's shape fixes everything the gate measures: the placeholder of its spec (contract/model.py) has the
trained model's layout and header sizes, so the firmware built for it has the same flash, RAM, stack and
multiply scan as the one the firmware stage will build. A search runs this for every trial it samples and
trains only the models that pass; the firmware stage gates the trained model again.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from contract.chips import CHIPS
from contract.layout import layout
from contract.model import placeholder
from contract.spec import model_spec
from mcu.analysis import FirmwareError
from pipeline.config import Config
from pipeline.firmware import gated_build, settings


def model_sizes(cfg: Config) -> dict[str, Any]:
    """contract.layout's sizes of the config's model (flash_bytes, ram_bytes, ...), known before training."""
    return layout(placeholder(model_spec(cfg)))


def misfit(cfg: Config) -> str | None:
    """Why the config's model cannot run on mcu.target (one line), or None when its firmware passes the gate."""
    chip = CHIPS[cfg["mcu.target"]]
    sizes = model_sizes(cfg)
    if sizes["flash_bytes"] > chip.flash or sizes["ram_bytes"] > chip.ram:   # no build needed to see it
        return (f"the model alone needs {sizes['flash_bytes']:,} B of flash and {sizes['ram_bytes']:,} B of "
                f"buffers; the {chip.name} has {chip.flash:,} B and {chip.ram:,} B")
    n = cfg["data.image_size"]
    # demo firmware: the images' pixels take flash, their values do not matter; "as many as fit" needs one
    images = np.zeros((max(1, cfg["mcu.demo_images"]), n, n), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="bitmcu-fit-") as out:
        try:
            gated_build(cfg, settings(cfg, cfg.name), placeholder(model_spec(cfg)), Path(out), images,
                        np.zeros(len(images), dtype=np.uint8))
        except FirmwareError as e:   # its first line says what failed; of a size table, the rows over the limit
            lines = str(e).splitlines()
            return "; ".join([lines[0].rstrip(":"), *(" ".join(ln.split()) for ln in lines if ln.endswith("OVER"))])
    return None
