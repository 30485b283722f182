"""Progress of a long loop, readable in a terminal and in a log file alike.

In a terminal (stderr is a TTY) :func:`progress` draws a tqdm bar that redraws in place.
Elsewhere (a log file, a Kaggle notebook's output, CI) each redraw would be kept, thousands
of carriage-return lines per loop, so it logs one line per tenth of the work instead,
through :mod:`logging` at INFO::

    features demo_test_a: 3/23 images (13 %)
    ...
    features demo_test_a: 23/23 images (100 %)

tqdm's own switches (``TQDM_DISABLE=1``, ...) apply to the bar; the log lines follow the
logging configuration (the ``src.progress`` logger unless another is given). A process whose
bars would overwrite other processes' bars on one terminal (the geometric pipeline's dataset
workers) calls :func:`log_lines_only` first.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)

__all__ = ["progress", "log_lines_only", "LOG_STEPS"]

# Log lines per loop when stderr is not a terminal: one each time another tenth is done.
LOG_STEPS = 10
Item = TypeVar("Item")
_bars = True  # False in a process that shares its terminal with others (log_lines_only)


def log_lines_only() -> None:
    """Log lines instead of bars in this process from now on, even on a terminal."""
    global _bars
    _bars = False


def progress(iterable: Iterable[Item], desc: str, unit: str, total: int | None = None,
             logger: logging.Logger | None = None) -> Iterator[Item]:
    """Yield the items of ``iterable`` while reporting how many are done.

    desc: what the loop does, e.g. ``"features demo_test_a"``; unit: one item, singular
    (``"image"``; the log lines say ``images``); total: the number of items, taken from
    ``len(iterable)`` when None (without either, only the end is logged). An item counts as
    done when the loop asks for the next one.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if _bars and _stderr_is_terminal():
        yield from tqdm(iterable, desc=desc, unit=unit, total=total)
    else:
        yield from _logged(iterable, desc, unit, total, logger or log)


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # a stand-in stream, or a closed one
        return False


def _logged(iterable: Iterable[Item], desc: str, unit: str, total: int | None,
            logger: logging.Logger) -> Iterator[Item]:
    units = unit if unit.endswith("s") else f"{unit}s"
    done = 0
    for item in iterable:
        yield item
        done += 1
        if total and done <= total and \
                done * LOG_STEPS // total > (done - 1) * LOG_STEPS // total:
            logger.info("%s: %d/%d %s (%d %%)", desc, done, total, units, 100 * done // total)
    if not total and done:
        logger.info("%s: %d %s", desc, done, units)
