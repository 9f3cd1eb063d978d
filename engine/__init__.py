"""The C engine: engine/bitmcu.{h,c} (integer-only kernels and model driver, CONTRACT.md),
engine/header.py (packed model -> C header) and engine/build.py (cffi build and run_c).

Nothing is imported here, so `engine.build` loads without torch or numba.
"""
