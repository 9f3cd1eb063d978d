"""The facts every implementation shares: weight formats, packing, the model description, the
exported model, the chips and the error type.

Torch-free (numpy at most) and importing nothing else of the project, so PyTorch's integer path,
the numba engine, the C engine's generator, the firmware build and the pipeline all build on it
and dependencies run one way. A new weight format or chip is one row of its table.
"""
