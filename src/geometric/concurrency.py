"""The cores a process may use, and independent calls run side by side within a dataset.

The datasets of a run already go to worker processes (pipeline.dataset_workers), but a run of
one dataset (or the last one left) leaves cores idle: OpenCV's SIFT and numpy's products
spread over the cores only in parts, and the reductions and RANSAC after them run on one.
Independent calls of such stages (the images of a dataset, the pairs to match) run here in
threads, each library on its share of the cores: OpenCV and numpy release Python's lock while
they work, and each call does exactly what it would do alone, so the results are the same to
the bit whichever finishes first (tested). pycolmap is not run this way: two of its solvers at
once in one process made its bundled LAPACK report failed factorisations (CHOLMOD "not
positive definite"), never seen one at a time.

A worker process is given its share of the cores (``set_process_threads``, pipeline's
worker set-up); elsewhere a process may use every core it is allowed on.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_process_threads: int | None = None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or taskset
    narrows; os.cpu_count() where the OS has no such mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_process_threads(threads: int | None) -> None:
    """This process's share of the cores (a dataset worker's), or None for all it may use."""
    global _process_threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"process threads must be an integer >= 1 or None, got {threads!r}")
    _process_threads = threads


def process_threads() -> int:
    """Threads this process may keep busy: its worker share, else every available core."""
    return _process_threads or available_cores()


@contextlib.contextmanager
def library_threads(threads: int) -> Iterator[None]:
    """OpenCV's and BLAS's (and OpenMP's) thread pools limited to ``threads`` within the
    block, restored after. Calls run side by side each spreading over every core oversubscribe
    them: two pairs matched at once with BLAS on one thread each took 1.75 s where one pair at
    a time with BLAS on both cores took 2.58 s (200 realdev2 pairs, 2048 keypoints), and SIFT
    likewise (30 images: 3.5 s against 5.2 s). Results are the same to the bit (tested)."""
    import cv2
    from threadpoolctl import threadpool_limits

    previous = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        cv2.setNumThreads(previous)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None
                ) -> Iterator[R]:
    """``fn`` of each item, yielded in the items' order as they become ready, up to
    ``threads`` (default :func:`process_threads`) computing at once and at most twice that
    many results waiting: a long list (images) is never all in memory. Meanwhile OpenCV's
    and BLAS's own pools get this process's threads shared among the calls
    (:func:`library_threads`). One thread computes each item only when the caller asks for
    it, as a plain loop would, with the libraries' pools as they are."""
    threads = threads or process_threads()
    if threads <= 1:
        for item in items:
            yield fn(item)
        return
    pending: deque[Future] = deque()
    with library_threads(max(1, process_threads() // threads)), \
            ThreadPoolExecutor(threads) as pool:
        try:
            for item in items:
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
                pending.append(pool.submit(fn, item))
            while pending:
                yield pending.popleft().result()
        finally:  # the caller stopped early or a call failed: drop what has not started
            for future in pending:
                future.cancel()


__all__ = ["available_cores", "library_threads", "ordered_map", "process_threads",
           "set_process_threads"]
