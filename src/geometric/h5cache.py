"""Resumable HDF5 caches, shared by the feature and matching stages.

A stage caches its output for one dataset in one HDF5 file named after its configuration
(hloc keeps ``feats-*.h5`` and ``matches-*.h5`` the same way). What every such file has in
common:

- the root attribute ``config``: the stage's configuration as canonical JSON; a cache is
  only reused by a run with the same configuration (:func:`read_cache_config`);
- one group per entry (an image, at a path made of its name escaped by :func:`h5_key`;
  the matches stage stores batches of pairs instead, ``matching.py``);
- a completion mark per entry: an attribute the stage writes last (``image_size`` for
  features, ``complete`` for a batch of matches), so a group without it is an unfinished
  entry of an interrupted run (:func:`is_complete`);
- a work copy ``.<name>.partial`` beside the cache while entries are added, published over
  the cache when the stage succeeds (:func:`resumable_h5`).

The layout of each stage's entries is documented in its module (``src.geometric.features``,
``src.geometric.matching``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Hashable, Iterable, Iterator, TypeVar

import h5py

from src.data_io import DataError

log = logging.getLogger(__name__)

__all__ = [
    "h5_key",
    "name_from_h5_key",
    "partial_path",
    "read_cache_config",
    "check_config",
    "resumable_h5",
    "is_complete",
    "incomplete",
    "all_complete",
    "published_holds",
    "new_entry",
]

CONFIG_ATTR = "config"
Entry = TypeVar("Entry", bound=Hashable)


def h5_key(name: str) -> str:
    """An image name as an HDF5 link name: '/' would nest groups, so it is escaped (with
    '%', itself escaped first, so the mapping is reversible)."""
    if not name or name in (".", ".."):
        raise ValueError(f"image name {name!r} cannot be stored in an HDF5 file")
    return name.replace("%", "%25").replace("/", "%2F")


def name_from_h5_key(key: str) -> str:
    """Inverse of :func:`h5_key`."""
    return key.replace("%2F", "/").replace("%25", "%")


def partial_path(cache_path: str | os.PathLike) -> Path:
    """The work copy of a cache while entries are added: ``.<name>.partial`` beside it."""
    cache_path = Path(cache_path)
    return cache_path.with_name(f".{cache_path.name}.partial")


def open_cache(cache_path: str | os.PathLike) -> h5py.File:
    """A cache file opened for reading; DataError naming it when HDF5 cannot open it (HDF5's
    own message names no file). A missing file is FileNotFoundError; a lock is raised."""
    cache_path = Path(cache_path)
    if not cache_path.is_file():
        raise FileNotFoundError(f"cache not found: {cache_path}")
    try:
        return h5py.File(cache_path, "r")
    except BlockingIOError:
        raise
    except OSError as error:
        raise DataError(f"{cache_path} cannot be read ({error}); running the pipeline on "
                        f"this data again moves it aside and computes it afresh") from None


def read_cache_config(cache_path: str | os.PathLike) -> str | None:
    """The configuration JSON recorded in a cache file (None if it records none)."""
    with open_cache(cache_path) as h5:
        config = h5.attrs.get(CONFIG_ATTR)
    return None if config is None else str(config)


def check_config(cache_path: str | os.PathLike, recorded: str | None, wanted: str) -> None:
    """ValueError naming the file when it records another configuration than ``wanted``."""
    if recorded != wanted:
        raise ValueError(f"{cache_path} was written with configuration {recorded}, not "
                         f"{wanted}; use a cache path named after the configuration's "
                         "cache_key(), or overwrite=True")


def set_aside_if_unreadable(cache_path: str | os.PathLike) -> Path | None:
    """Move a cache file that HDF5 cannot open (truncated, overwritten, not HDF5) aside as
    ``<name>.unreadable-<time>``, with a warning naming both, so that the stage computes it
    afresh instead of failing on it in every later run; returns where it went (None when
    the file is readable or absent). Another process's lock is not damage: it is raised."""
    cache_path = Path(cache_path)
    if not cache_path.is_file():
        return None
    try:
        with h5py.File(cache_path, "r"):
            return None
    except BlockingIOError:
        raise
    except OSError as error:
        aside = cache_path.with_name(f"{cache_path.name}.unreadable-"
                                     f"{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(cache_path, aside)
        log.warning("%s cannot be read (%s); moved aside to %s and computed again",
                    cache_path, error, aside.name)
        return aside


def is_complete(h5: h5py.Group, path: str, mark: str) -> bool:
    """True when the entry at ``path`` exists and carries its completion mark ``mark``."""
    return path in h5 and mark in h5[path].attrs


def incomplete(h5: h5py.Group, entries: Iterable[Entry], path_of: Callable[[Entry], str],
               mark: str) -> list[Entry]:
    """The ``entries`` (in order) whose group ``path_of(entry)`` is missing or unfinished."""
    return [entry for entry in entries if not is_complete(h5, path_of(entry), mark)]


def all_complete(cache_path: str | os.PathLike, config_json: str, entries: Iterable[Entry],
                 path_of: Callable[[Entry], str], mark: str) -> bool:
    """True when the published cache at ``cache_path`` exists and holds every entry complete
    (see :func:`incomplete`); ValueError (:func:`check_config`) when it records another
    configuration. Lets a stage return early, before loading any network."""
    return published_holds(cache_path, config_json,
                           lambda h5: not incomplete(h5, entries, path_of, mark))


def published_holds(cache_path: str | os.PathLike, config_json: str,
                    holds: Callable[[h5py.File], bool]) -> bool:
    """``holds(h5)`` of the published cache at ``cache_path``; False when there is none (or
    it was unreadable: set aside); ValueError (:func:`check_config`) when it records another
    configuration."""
    set_aside_if_unreadable(cache_path)
    if not Path(cache_path).exists():
        return False
    with open_cache(cache_path) as h5:
        check_config(cache_path, h5.attrs.get(CONFIG_ATTR), config_json)
        return holds(h5)


def new_entry(h5: h5py.Group, path: str) -> h5py.Group:
    """An empty group at ``path`` (intermediate groups created), replacing the unfinished
    entry an interrupted run may have left there."""
    if path in h5:
        del h5[path]
    return h5.create_group(path)


@contextlib.contextmanager
def resumable_h5(cache_path: str | os.PathLike, config_json: str,
                 overwrite: bool = False) -> Iterator[h5py.File]:
    """Open a work copy of an HDF5 cache to add entries; publish it over ``cache_path``
    when the block succeeds.

    The work copy is :func:`partial_path`. Success renames it over ``cache_path`` (atomic
    within a filesystem), so a reader never sees a half-written cache. After an exception
    or a kill the work copy stays, and the next call continues from it; the caller decides
    which of its entries are complete (:func:`is_complete`). Starting point:

    - ``overwrite``: an empty file;
    - else the work copy, if it is readable and records ``config_json``;
    - else a copy of ``cache_path`` (which must record ``config_json``: ValueError
      otherwise), else an empty file.

    Not for two processes on one cache: the second fails (BlockingIOError) on the lock.
    """
    cache_path = Path(cache_path)
    partial = partial_path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    set_aside_if_unreadable(cache_path)
    if not overwrite and cache_path.exists():
        check_config(cache_path, read_cache_config(cache_path), config_json)
    h5 = None if overwrite else _open_leftover(partial, cache_path, config_json)
    if h5 is None:
        partial.unlink(missing_ok=True)
        if not overwrite and cache_path.exists():
            shutil.copyfile(cache_path, partial)
            h5 = h5py.File(partial, "a")
        else:
            h5 = h5py.File(partial, "w")
            h5.attrs[CONFIG_ATTR] = config_json
    try:
        yield h5
    finally:
        h5.close()
    os.replace(partial, cache_path)


def _open_leftover(partial: Path, cache_path: Path, config_json: str) -> h5py.File | None:
    """The work copy an interrupted run left, open for appending, if it is readable and
    records ``config_json``; else None (the caller starts over)."""
    if not partial.exists():
        return None
    try:
        h5 = h5py.File(partial, "a")
    except BlockingIOError:
        raise BlockingIOError(f"{partial} is locked: is another run writing "
                              f"{cache_path}?") from None
    except OSError as error:
        log.warning("%s: unreadable leftover of an interrupted run (%s); starting over",
                    partial, error)
        return None
    if h5.attrs.get(CONFIG_ATTR) != config_json:
        log.info("%s: leftover of a run with another configuration; starting over", partial)
        h5.close()
        return None
    log.info("%s: continuing an interrupted run", partial)
    return h5
