"""Small helpers shared by the package: argument checks under one error rule, and progress bars.

The error rule: an argument of the wrong Python type raises TypeError (a float where an int goes); a value of the
right type that is out of range, and array contents (shape, dtype, NaN, ids) that are wrong, raise ValueError.
"""
import numbers

import numpy as np

__all__ = ["PROGRESS_MIN_ITEMS", "positive_int", "progress_bar"]

PROGRESS_MIN_ITEMS = 200_000  # progress=None shows a bar only for work over this many items


def positive_int(value, name: str) -> int:
    """value as an int, checked to be > 0.

    Raises
    ------
    TypeError
        value is not an integer (bools are refused too).
    ValueError
        value <= 0.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def progress_bar(iterable=None, *, total: int, desc: str, unit: str, progress: bool | None, items: int | None = None):
    """A tqdm bar over iterable (or a manual one when iterable is None).

    progress: True or False forces the bar on or off; None shows it when ``items`` (default ``total``) reaches
    PROGRESS_MIN_ITEMS.
    """
    from tqdm.auto import tqdm
    items = total if items is None else items
    disable = (items < PROGRESS_MIN_ITEMS) if progress is None else not progress
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable)
