"""The errors flowood raises for problems a user can fix, and the "did you mean" helper they share.

Every such error derives from :class:`FlowoodError`, so a program can catch them all, and the
``flowood`` command prints them as one line (an unexpected exception, a bug, keeps its traceback).
Messages name Python parameters in backticks (```overwrite=True```); the command line shows the
same names as flags (``--overwrite``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["FlowoodError", "DataError", "InputError", "ModelError", "closest"]


class FlowoodError(Exception):
    """Base class of the errors that mean bad input, missing data or an unsafe request, not a bug."""


class DataError(FlowoodError, ValueError):
    """Data that cannot be modelled as they are (non-finite, huge or constant values, wrong files);
    the message names the set, the feature or file, and what to do."""


class InputError(FlowoodError, ValueError):
    """A batch handed to a model or score that it cannot take (shape, dtype, range, NaN), named in the message."""


class ModelError(FlowoodError, ValueError):
    """A model that gives non-finite numbers (e.g. a diverged checkpoint), or models that do not fit together."""


def closest(name: Any, choices: Iterable[Any]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or an empty string.

    Example:
        >>> closest("glwo", ["RealNVP", "Glow"])
        " (did you mean 'Glow'?)"
    """
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""
