"""The cores a process may use, and independent calls run side by side within a dataset.

The datasets of a run already go to worker processes (pipeline.dataset_workers), but a run of
one dataset (or the last one left) leaves cores idle: OpenCV's SIFT and numpy's products
spread over the cores only in parts, and the reductions and RANSAC after them run on one.
Independent calls of such stages (the images of a dataset, the pairs to match) run here in
threads, each library on its share of the cores: OpenCV and numpy release Python's lock while
they work, and each call does exactly what it would do alone, so the results are the same to
the bit whichever finishes first (tested). pycolmap is not run in threads: two of its solvers
at once in one process made its bundled LAPACK report failed factorisations (CHOLMOD "not
positive definite"), never seen one at a time. An independent SfM run goes instead to a
helper process (:func:`in_helper`), whose result is what the same call returns here; the
mappings of a dataset's scenes go to whichever of the two is free (:func:`sfm_slots`).

A dataset worker process shares the cores with the workers still busy (``share_cores``,
pipeline's worker set-up); elsewhere a process may use every core it is allowed on.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A fixed number of threads for this process (tests set it), else its share (process_threads).
_process_threads: int | None = None
# A dataset worker's view of its run (share_cores): (the run's datasets not finished yet, a
# counter shared by the workers; the number of workers; the cores they share).
_shared: tuple | None = None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or taskset
    narrows; os.cpu_count() where the OS has no such mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def process_threads() -> int:
    """Threads this process may keep busy: as a dataset worker its share of the cores among
    the workers still busy (share_cores), else every available core."""
    if _process_threads:
        return _process_threads
    if _shared is not None:
        unfinished, workers, cores = _shared
        return max(1, cores // max(1, min(workers, unfinished.value)))
    return available_cores()


def share_cores(unfinished, workers: int, cores: int) -> None:
    """In a dataset worker: share ``cores`` with the other ``workers`` while ``unfinished``
    (a shared multiprocessing.Value) counts more datasets than workers; as the last datasets
    run, fewer workers are busy and each takes more threads for what it does side by side.
    A run's last, largest dataset otherwise ran on one core beside idle ones (realdev with two
    workers: 31.6 s against 22.9 s one dataset after the other). The results do not depend
    on the threads (concurrency's tests)."""
    global _shared
    _shared = (unfinished, workers, cores)


def dataset_finished() -> None:
    """In a dataset worker: one dataset of the run is done (see share_cores)."""
    if _shared is not None:
        with _shared[0].get_lock():
            _shared[0].value -= 1


@contextlib.contextmanager
def library_threads(threads: int) -> Iterator[None]:
    """OpenCV's and BLAS's thread pools limited to ``threads`` within the block, restored
    after (process-wide settings: one pipeline run per process is assumed). Calls run side by
    side, each spreading over every core, oversubscribe them: two pairs matched at once with
    BLAS on one thread each took 1.75 s where one pair at a time with BLAS on both cores took
    2.58 s (200 realdev2 pairs, 2048 keypoints), and SIFT likewise (30 images: 3.5 s against
    5.2 s). Results are the same to the bit (tested)."""
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


# =========================================================================== helper process
_helper: ProcessPoolExecutor | None = None
_helper_lock = threading.Lock()


def _helper_pool() -> ProcessPoolExecutor:
    """This process's helper, started on first use (spawned: pycolmap and OpenCV keep thread
    pools a fork would copy half-alive) and shut down when the process exits."""
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_start_helper)
            # Shut down before multiprocessing waits for this process's children at exit (a
            # dataset worker leaves through that wait, not through atexit, and would wait for
            # ever on a helper never told to stop), and before the executor's queues close
            # (their finalisers, priority 10) the pipe that the stop message goes through.
            multiprocessing.util.Finalize(None, _helper.shutdown,
                                          kwargs=dict(wait=True, cancel_futures=True),
                                          exitpriority=100)
        return _helper


def _start_helper() -> None:
    """The helper runs one call at a time beside this process, one thread for each library,
    and logs nothing itself: its calls' records are handled by the caller (a script that
    configures logging on import would otherwise print them twice)."""
    import cv2
    from threadpoolctl import threadpool_limits

    importlib.import_module("pycolmap")  # loads its OpenMP, so that the limit reaches it

    cv2.setNumThreads(1)
    threadpool_limits(1)
    global _process_threads
    _process_threads = 1  # its calls see one core: none of them starts a helper of its own
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.NullHandler())
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


HELPER_PARENT_CHECK_S = 2.0  # how often the helper looks whether its parent is still there


def _exit_with_parent(parent: int) -> None:
    """In the helper: end it when the process that started it is gone (a dataset worker
    killed, e.g. for memory, never shuts its helper down, which would wait for work for
    ever)."""
    while True:
        time.sleep(HELPER_PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)


class _Captured(logging.Handler):
    """Keeps the records a call logs in the helper, to be handled again in the caller."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:  # as logging.handlers.QueueHandler.prepare: the text, traceback included
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        record.msg, record.args, record.exc_info, record.exc_text = message, None, None, None
        self.records.append(record)


def _logged_call(level: int, fn: Callable[..., R], args: tuple
                 ) -> tuple[R | None, list, BaseException | None, float]:
    """In the helper: (``fn(*args)``, the records it logged at ``level`` or above, the
    exception it raised or None, the CPU seconds it took)."""
    root = logging.getLogger()
    captured = _Captured()
    root.addHandler(captured)
    previous = root.level
    root.setLevel(level)
    started = time.process_time()
    try:
        return fn(*args), captured.records, None, time.process_time() - started
    except Exception as error:  # raised again in the caller, after its log lines
        error.add_note("in the helper process:\n" + "".join(traceback.format_exception(error)))
        return None, captured.records, error, time.process_time() - started
    finally:
        root.removeHandler(captured)
        root.setLevel(previous)


_helper_cpu = 0.0  # CPU seconds of the calls this process had the helper make


def helper_cpu_seconds() -> float:
    """CPU seconds the helper process spent on this process's calls so far (a benchmark's
    process time leaves them out)."""
    return _helper_cpu


def helper_wanted() -> bool:
    """Whether this process has a core to spare for a helper process, and can start one."""
    return process_threads() >= 2 and spawn_possible()


_spawn_warned = False  # said once (two threads racing would say it twice: harmless)


def spawn_possible() -> bool:
    """Whether a spawned process (the helper, a dataset worker) can start from this
    program. It imports the program's main module again, by name when it was run with
    ``-m``, else from its file: a program read from standard input (``python - <<EOF``,
    whose file is "<stdin>") or a script deleted since it started has none, and every
    process would die on starting. An interactive session, ``python -c``, a notebook and a
    frozen program import nothing and start as they are. Said once, as a warning, when
    not."""
    global _spawn_warned
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(getattr(main, "__spec__", None), "name", None) is not None or path is None \
            or getattr(sys, "frozen", False):
        return True
    try:  # a relative path is looked for where multiprocessing was first imported
        start_dir = "" if os.path.isabs(path) else (multiprocessing.process.ORIGINAL_DIR
                                                     or os.getcwd())
        if os.path.isfile(os.path.join(start_dir, path)):
            return True
    except OSError:  # the working folder is gone: nor could a new process find the file
        pass
    if not _spawn_warned:
        _spawn_warned = True
        logging.getLogger(__name__).warning(
            "this program's main module (%s) is not a file that a new process could import "
            "(a script read from standard input?); no worker or helper processes, "
            "everything runs in this process. Save the script to a file to use the other "
            "cores.", path)
    return False


class HelperCall:
    """A call started by :func:`in_helper`: calling it waits for the result."""

    def __init__(self, fn: Callable[..., R], args: tuple, future: Future | None) -> None:
        self._fn, self._args, self._future = fn, args, future

    def __call__(self):
        """The call's result, logging here what it logged there and raising what it raised
        (made here, with a warning, when the helper died on it: one pycolmap call at a
        time, :func:`pycolmap_here`)."""
        global _helper_cpu
        if self._future is None:
            with pycolmap_here():
                return self._fn(*self._args)
        try:
            value, records, error, cpu_seconds = self._future.result()
        except BrokenProcessPool as broken:
            return _here_instead(broken, self._fn, self._args)()
        _helper_cpu += cpu_seconds
        for record in records:
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        if error is not None:
            raise error
        return value


def in_helper(fn: Callable[..., R], *args) -> HelperCall:
    """Start ``fn(*args)`` in the helper process (``fn`` importable, ``args`` picklable);
    returns a call that waits for its result, logging here what it logged there, and raising
    what it raised. When the helper cannot run (it could not start, or died), the call is
    made here instead, with a warning."""
    level = logging.getLogger().getEffectiveLevel()
    try:
        future = _helper_pool().submit(_logged_call, level, fn, args)
    except (BrokenProcessPool, OSError, RuntimeError) as error:
        return _here_instead(error, fn, args)
    return HelperCall(fn, args, future)


def prepare_helper(module: str) -> None:
    """Start the helper now and have it import ``module`` (that of the calls to come), so
    that the first of them does not wait for both: ~0.2 s to start and ~0.2 s to import
    the SfM module, spent while this process works on. Nothing is waited for; a
    helper that cannot start is noticed by the first call (:func:`in_helper`)."""
    try:
        _helper_pool().submit(_import, module)
    except (BrokenProcessPool, OSError, RuntimeError):
        pass


def _import(module: str) -> None:
    importlib.import_module(module)


def _here_instead(error: BaseException, fn: Callable[..., R], args: tuple) -> HelperCall:
    global _helper
    logging.getLogger(__name__).warning(
        "the helper process failed (%s: %s); %s runs in this process", type(error).__name__,
        error, getattr(fn, "__name__", fn))
    with _helper_lock:
        _helper = None  # a later call starts a new one
    return HelperCall(fn, args, None)


# Held by whatever runs pycolmap in this process while SfM slots are open: the slot here, a
# helper call made here after all, a scene thread's own use (reentrant: one holder may call
# another).
_pycolmap_lock = threading.RLock()


def pycolmap_here() -> threading.RLock:
    """The lock (a context manager) under which a thread of this process runs pycolmap, so
    that two threads never do at once (see the module's docstring)."""
    return _pycolmap_lock


class SfmSlots:
    """Two places where independent pycolmap calls run side by side: this process (one
    call at a time, in a thread of its own: pycolmap is never run in two threads of one
    process) and the helper. Each takes the next call waiting when it is free, whichever
    scene asked for it, so neither waits while a call is ready: a scene's calls (its
    mapping, the camera choice's fit, the other mapper) meet the other scenes' calls. Used
    through :func:`sfm_slots` and :func:`in_sfm_slot`."""

    def __init__(self) -> None:
        self._waiting: queue.Queue = queue.Queue()
        self._servers = [threading.Thread(target=self._serve, args=(in_the_helper,),
                                          name=f"sfm-slot-{where}", daemon=True)
                         for in_the_helper, where in ((False, "here"), (True, "helper"))]
        for server in self._servers:
            server.start()

    def submit(self, fn: Callable[..., R], *args) -> Future:
        """``fn(*args)`` (importable and picklable, for the helper), queued for the first
        slot free."""
        future: Future = Future()
        self._waiting.put((fn, args, future))
        return future

    def _serve(self, in_the_helper: bool) -> None:
        from threadpoolctl import threadpool_limits

        # One thread for BLAS and OpenMP, as in the helper: a call's result does not depend
        # on the slot that took it (OpenMP's limit is the calling thread's own).
        with contextlib.nullcontext() if in_the_helper else threadpool_limits(1):
            while (item := self._waiting.get()) is not None:
                fn, args, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    if in_the_helper:
                        future.set_result(in_helper(fn, *args)())
                    else:
                        with pycolmap_here():
                            future.set_result(fn(*args))
                except BaseException as error:  # raised where the result is asked for
                    future.set_exception(error)

    def cancel_waiting(self) -> None:
        """Cancel the calls no slot has taken yet (their callers get CancelledError)."""
        while True:
            try:
                item = self._waiting.get_nowait()
            except queue.Empty:
                return
            if item is None:  # close() has begun: leave its stop marks
                self._waiting.put(None)
                return
            item[2].cancel()

    def close(self) -> None:
        """Let the calls already submitted end, then stop both slots."""
        for _ in self._servers:
            self._waiting.put(None)
        for server in self._servers:
            server.join()


_sfm_slots: SfmSlots | None = None


@contextlib.contextmanager
def sfm_slots() -> Iterator[SfmSlots]:
    """Within the block, :func:`in_sfm_slot` sends pycolmap calls to two slots (here and the
    helper, :class:`SfmSlots`); the calling threads (one per scene) only wait for them."""
    global _sfm_slots
    if _sfm_slots is not None:
        raise RuntimeError("sfm_slots() is already open in this process")
    _sfm_slots = SfmSlots()
    try:
        yield _sfm_slots
    finally:
        _sfm_slots, slots = None, _sfm_slots
        slots.close()


def in_sfm_slot(fn: Callable[..., R], *args) -> Future | None:
    """``fn(*args)`` queued for the first free slot of the open :func:`sfm_slots` (its result
    a Future), or None when none is open (the caller then decides where it runs)."""
    return None if _sfm_slots is None else _sfm_slots.submit(fn, *args)


__all__ = ["HelperCall", "SfmSlots", "available_cores", "dataset_finished",
           "helper_cpu_seconds", "helper_wanted", "in_helper", "in_sfm_slot", "library_threads",
           "ordered_map", "prepare_helper", "process_threads", "pycolmap_here", "sfm_slots",
           "share_cores", "spawn_possible"]
