"""benchmarks/benchmark_geometric.py's seeded configurations: --top-k and --exhaustive-below
reach the seeded runs as the pair fields they stand for, beside --set."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_geometric.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_geometric", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pair_flags_reach_the_seeded_runs(bench):
    overrides = bench.seeded_overrides(["mapper=global"], top_k=20, exhaustive_below=200)
    assert overrides == {"mapper": "global", "pair_top_k": 20, "pair_exhaustive_below": 200}
    conf = bench.seeded_conf(41, overrides)
    assert (conf.pairs.top_k, conf.pairs.exhaustive_below) == (20, 200)
    assert conf.reconstruction.mapper == "global" and conf.reconstruction.seed == 41
    assert bench.seeded_overrides([]) == {}


def test_a_pair_field_given_twice_is_refused(bench):
    with pytest.raises(SystemExit, match="--top-k 20 and --set pair_top_k=10"):
        bench.seeded_overrides(["pair_top_k=10"], top_k=20)
