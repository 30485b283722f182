"""The resumable-HDF5 helpers the feature and matching caches share."""

from __future__ import annotations

import h5py
import pytest

from src.geometric.h5cache import (all_complete, h5_key, incomplete, is_complete,
                                   name_from_h5_key, new_entry, partial_path,
                                   read_cache_config, resumable_h5)

CONFIG = '{"name": "test"}'


def _write_entries(cache, names, finished=True):
    with resumable_h5(cache, CONFIG) as h5:
        for name in names:
            group = new_entry(h5, h5_key(name))
            if finished:
                group.attrs["done"] = 1


@pytest.mark.parametrize("name", ["a.png", "sub/dir/b.jpg", "50%.png", "%2F.png", "a%25/b"])
def test_keys_have_no_slash_and_round_trip(name):
    assert "/" not in h5_key(name)
    assert name_from_h5_key(h5_key(name)) == name


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_unstorable_names_are_refused(name):
    with pytest.raises(ValueError, match="cannot be stored"):
        h5_key(name)


def test_a_published_cache_records_its_config_and_leaves_no_work_copy(tmp_path):
    cache = tmp_path / "stage.h5"
    _write_entries(cache, ["a.png"])
    assert read_cache_config(cache) == CONFIG
    assert not partial_path(cache).exists()
    assert partial_path(cache).name == ".stage.h5.partial"


def test_entries_without_their_mark_are_incomplete_and_replaced(tmp_path):
    cache = tmp_path / "stage.h5"
    _write_entries(cache, ["a.png"])
    _write_entries(cache, ["sub/b.png"], finished=False)
    with h5py.File(cache, "r") as h5:
        assert is_complete(h5, h5_key("a.png"), "done")
        assert not is_complete(h5, h5_key("sub/b.png"), "done")
        assert not is_complete(h5, h5_key("c.png"), "done")
        assert incomplete(h5, ["c.png", "a.png", "sub/b.png"], h5_key, "done") == \
            ["c.png", "sub/b.png"]
    _write_entries(cache, ["sub/b.png"])  # new_entry replaces the unfinished group
    assert all_complete(cache, CONFIG, ["a.png", "sub/b.png"], h5_key, "done")


def test_all_complete_needs_a_published_cache_of_the_same_config(tmp_path):
    cache = tmp_path / "stage.h5"
    # no cache yet: not complete, even for no entries (the stage must still write the file)
    assert not all_complete(cache, CONFIG, [], h5_key, "done")
    _write_entries(cache, ["a.png"])
    assert all_complete(cache, CONFIG, [], h5_key, "done")
    assert not all_complete(cache, CONFIG, ["a.png", "b.png"], h5_key, "done")
    with pytest.raises(ValueError, match="stage.h5 was written with configuration"):
        all_complete(cache, '{"name": "other"}', ["a.png"], h5_key, "done")
    with pytest.raises(ValueError, match="stage.h5 was written with configuration"):
        with resumable_h5(cache, '{"name": "other"}'):
            pass


def test_overwrite_starts_from_an_empty_file(tmp_path):
    cache = tmp_path / "stage.h5"
    _write_entries(cache, ["a.png"])
    with resumable_h5(cache, '{"name": "other"}', overwrite=True) as h5:
        assert list(h5) == []
    assert read_cache_config(cache) == '{"name": "other"}'
