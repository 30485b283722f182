"""progress(): a tqdm bar in a terminal, one log line per tenth of the work elsewhere."""

from __future__ import annotations

import io
import logging

import pytest

from src.progress import progress


@pytest.fixture
def not_a_terminal(monkeypatch):
    """stderr redirected to a file-like object, as in a log file or CI."""
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    yield
    assert stderr.getvalue() == ""  # no bar drawn


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "src.progress"]


def test_without_a_terminal_it_logs_each_tenth_and_the_end(not_a_terminal, caplog):
    with caplog.at_level(logging.INFO, logger="src.progress"):
        items = list(progress(range(100), "features demo_test_a", "image"))
    assert items == list(range(100))
    assert _messages(caplog) == [f"features demo_test_a: {k}/100 images ({k} %)"
                                 for k in range(10, 101, 10)]


def test_short_and_uneven_loops_log_at_most_ten_lines_ending_at_100_percent(not_a_terminal,
                                                                           caplog):
    with caplog.at_level(logging.INFO, logger="src.progress"):
        list(progress(["a", "b", "c"], "matching x", "pair"))
        list(progress(range(23), "features y", "image"))
    lines = _messages(caplog)
    assert lines[:3] == ["matching x: 1/3 pairs (33 %)", "matching x: 2/3 pairs (66 %)",
                         "matching x: 3/3 pairs (100 %)"]
    rest = lines[3:]
    assert len(rest) == 10 and rest[-1] == "features y: 23/23 images (100 %)"
    assert rest[0] == "features y: 3/23 images (13 %)"  # the first tenth is done at 2.3


def test_an_item_counts_when_the_next_is_asked_for(not_a_terminal, caplog):
    with caplog.at_level(logging.INFO, logger="src.progress"):
        loop = progress(range(10), "work", "item")
        next(loop)
        assert _messages(caplog) == []  # item 0 is still being worked on
        next(loop)
        assert _messages(caplog) == ["work: 1/10 items (10 %)"]


def test_unknown_total_logs_only_the_end_and_empty_loops_log_nothing(not_a_terminal, caplog):
    with caplog.at_level(logging.INFO, logger="src.progress"):
        assert list(progress((x for x in "abcd"), "scan", "file")) == list("abcd")
        assert list(progress([], "nothing", "pair")) == []
    assert _messages(caplog) == ["scan: 4 files"]


def test_a_given_logger_is_used(not_a_terminal, caplog):
    logger = logging.getLogger("src.geometric.features")
    with caplog.at_level(logging.INFO, logger="src.geometric.features"):
        list(progress(range(2), "features z", "image", logger=logger))
    assert [r.name for r in caplog.records] == ["src.geometric.features"] * 2


def test_in_a_terminal_tqdm_draws_and_nothing_is_logged(monkeypatch, caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with caplog.at_level(logging.INFO, logger="src.progress"):
        assert list(progress(range(5), "features t", "image")) == list(range(5))
    assert _messages(caplog) == []
    assert "features t" in terminal.getvalue() and "5/5" in terminal.getvalue()


def test_a_process_sharing_the_terminal_logs_lines_instead_of_a_bar(monkeypatch, caplog):
    import src.progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(src.progress, "_bars", True)  # restored after the test
    src.progress.log_lines_only()
    with caplog.at_level(logging.INFO, logger="src.progress"):
        assert list(progress(range(2), "features w", "image")) == [0, 1]
    assert terminal.getvalue() == ""
    assert _messages(caplog)[-1] == "features w: 2/2 images (100 %)"
