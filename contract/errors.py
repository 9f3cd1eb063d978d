"""The error type of input the user controls."""
from __future__ import annotations


class UserError(Exception):
    """An error caused by input the user controls; printed as one clean message, never a traceback."""
