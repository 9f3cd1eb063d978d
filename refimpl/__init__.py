"""Numba reference engine of engine/CONTRACT.md: leaf kernels (kernels.py) and the glue (model.py)."""
