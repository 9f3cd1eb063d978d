"""The demo firmware's image count, for every family: `mcu.demo_images` N > 0 embeds the first N test
images, 0 as many as fit.

For 0, one build with a single image measures the room left; the count it pays for is built, and stepped
down while alignment or padding makes the real build a few bytes (words) larger than the estimate.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from contract.errors import UserError

B = TypeVar("B")


def demo_build(build: Callable[[int], B], spare: Callable[[B], int], per_image: int, available: int,
               count: int, where: str, error: type[UserError] = UserError) -> B:
    """The build (ungated: the caller gates it) with `count` images, or for count 0 the most that fit; spare(b)
    is the room left in the memory the images take (negative: over), per_image what one more image costs
    there. A build whose single image does not fit is returned as it is, so that its gate reports why. A count
    beyond the test set raises `error` (the family's firmware error)."""
    if count:
        if count > available:
            raise error(f"{where}: mcu.demo_images: {count} requested, the test set has {available}")
        return build(count)
    n, b = 1, build(1)
    if spare(b) < 0:
        return b
    for m in range(min(available, 1 + spare(b) // per_image), 1, -1):
        n, b = m, build(m)
        if spare(b) >= 0:
            return b
    return b if n == 1 else build(1)
