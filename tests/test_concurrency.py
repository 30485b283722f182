"""Calls run side by side within a dataset (src.geometric.concurrency): the helpers keep
order and limits, the stages that use them (SIFT extraction, nearest-neighbour matching with
OpenCV's RANSAC) store exactly what they store one call at a time, and the SfM mapping sent to
a helper process gives the models mapped here."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

import h5py
import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_info

from src.geometric import concurrency, features, matching, reconstruction
from src.geometric.concurrency import (dataset_finished, in_helper, library_threads,
                                       ordered_map, process_threads, share_cores)
from src.geometric.features import FeatureConf, extract_dataset
from src.geometric.matching import MatchConf, match_and_verify
from src.geometric.reconstruction import ReconConf, reconstruct_scene
from tests.synthetic_cluster import synthesize_cluster

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def threads(monkeypatch):
    """Sets a fixed thread count for this process for one test (restored afterwards)."""
    monkeypatch.setattr(concurrency, "_process_threads", None)
    monkeypatch.setattr(concurrency, "_shared", None)
    return lambda n: monkeypatch.setattr(concurrency, "_process_threads", n)


# --------------------------------------------------------------------------- helpers
def test_process_threads_are_the_available_cores_outside_a_worker(threads, monkeypatch):
    monkeypatch.setattr(concurrency.os, "sched_getaffinity", lambda pid: {0, 1, 2},
                        raising=False)
    assert process_threads() == 3


def test_a_dataset_worker_takes_more_threads_as_the_last_datasets_run(threads):
    unfinished = multiprocessing.Value("i", 5)  # five datasets, two workers on four cores
    share_cores(unfinished, 2, 4)
    assert process_threads() == 2
    for left, expected in [(4, 2), (3, 2), (2, 2), (1, 4), (0, 4)]:
        dataset_finished()
        assert unfinished.value == left and process_threads() == expected
    share_cores(multiprocessing.Value("i", 9), 3, 2)  # more workers than cores: one each
    assert process_threads() == 1
    threads(3)  # a fixed share wins
    assert process_threads() == 3


def test_ordered_map_keeps_the_order_when_later_items_finish_first():
    first_may_finish = threading.Event()

    def work(k):
        if k == 0:
            assert first_may_finish.wait(30)  # item 0 ends only after item 1 has
        else:
            first_may_finish.set()
        return k * 10

    assert list(ordered_map(work, range(5), threads=2)) == [0, 10, 20, 30, 40]


def test_ordered_map_reads_a_bounded_number_of_items_ahead():
    pulled = []

    def items():
        for k in range(100):
            pulled.append(k)
            yield k

    results = ordered_map(lambda k: k, items(), threads=2)
    assert next(results) == 0
    assert len(pulled) <= 2 * 2 + 1  # not the 100 items
    results.close()
    # one thread: each item is computed only when asked for, as a plain loop would
    computed = []
    lazy = ordered_map(lambda k: computed.append(k) or k, range(10), threads=1)
    assert computed == [] and next(lazy) == 0 and computed == [0]


def test_ordered_map_raises_an_items_failure_at_its_place():
    def work(k):
        if k == 2:
            raise ValueError("item 2")
        return k

    got = []
    with pytest.raises(ValueError, match="item 2"):
        for value in ordered_map(work, range(6), threads=2):
            got.append(value)
    assert got == [0, 1]


# --------------------------------------------------------------------------- stages
def _read_tree(path: Path) -> dict[str, object]:
    """Every dataset and attribute of an HDF5 file, by path."""
    found = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            found[name] = item[()]
        for key, value in item.attrs.items():
            found[f"{name}@{key}"] = value
    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return found


def _thread_counts(monkeypatch, module) -> list[int]:
    """The thread counts ``module`` passes to ordered_map, as it calls it."""
    used = []
    real_map = module.ordered_map
    monkeypatch.setattr(module, "ordered_map",
                        lambda fn, items, n: used.append(n) or real_map(fn, items, n))
    return used


def test_sift_extraction_side_by_side_stores_what_one_thread_stores(threads, tmp_path,
                                                                    monkeypatch):
    image_dir = FIXTURES / "entry5"
    images = sorted(p.name for p in image_dir.glob("*.jpg")) + ["missing.jpg"]
    conf = FeatureConf(name="sift", max_keypoints=512, max_image_side=640)
    used = _thread_counts(monkeypatch, features)
    stored = {}
    for n in (1, 2):
        threads(n)
        stored[n] = _read_tree(extract_dataset(image_dir, images, conf, tmp_path / f"f{n}.h5"))
    assert used == [1, 2]
    assert stored[1].keys() == stored[2].keys()
    assert sum(key.endswith("/keypoints") for key in stored[1]) == len(images)
    for key, value in stored[1].items():
        np.testing.assert_array_equal(stored[2][key], value, err_msg=key)
    assert len(stored[2][f"{features.h5_key('missing.jpg')}/keypoints"]) == 0


def test_library_threads_limits_opencv_and_blas_within_the_block_only():
    before_cv = cv2.getNumThreads()
    before_blas = [pool["num_threads"] for pool in threadpool_info()]
    with library_threads(1):
        assert cv2.getNumThreads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert cv2.getNumThreads() == before_cv
    assert [pool["num_threads"] for pool in threadpool_info()] == before_blas


@pytest.mark.parametrize("verifier", ["opencv-magsac", "pycolmap"])
def test_matching_side_by_side_stores_what_one_thread_stores(threads, tmp_path, monkeypatch,
                                                            verifier):
    image_dir = FIXTURES / "entry5"
    images = sorted(p.name for p in image_dir.glob("*.jpg"))
    features_path = extract_dataset(image_dir, images, FeatureConf(max_keypoints=1024,
                                                                   max_image_side=640),
                                    tmp_path / "features.h5")
    pairs = list(itertools.combinations(images, 2))
    conf = MatchConf(seed=3, verifier=verifier)
    used = _thread_counts(monkeypatch, matching)
    stored = {}
    for n in (1, 2):
        threads(n)
        counts = match_and_verify(features_path, pairs, conf, tmp_path / f"m{n}.h5")
        assert (counts["inliers"] >= conf.min_inliers).sum() >= 4  # real matches to compare
        stored[n] = _read_tree(tmp_path / f"m{n}.h5")
    # pycolmap's verifier is never run in threads (concurrency.py says why)
    assert used == ([1, 2] if verifier == "opencv-magsac" else [1, 1])
    assert stored[1].keys() == stored[2].keys()
    for key, value in stored[1].items():
        np.testing.assert_array_equal(stored[2][key], value, err_msg=key)


# --------------------------------------------------------------------------- helper process
def _logs_and_returns(value):
    logging.getLogger("tests.helper").info("working on %s in %d", value, os.getpid())
    logging.getLogger("tests.helper").debug("details nobody asked for")
    return value * 2


def _logs_and_fails():
    logging.getLogger("tests.helper").warning("about to fail")
    raise ValueError("bad value in the helper")


def _dies_unless_in(pid):
    if os.getpid() != pid:
        os._exit(3)  # the helper dies mid-call
    return "ran here"


def test_a_call_in_the_helper_returns_its_result_and_its_log_lines_here(caplog):
    caplog.set_level(logging.INFO)
    result = in_helper(_logs_and_returns, 21)
    assert result() == 42
    lines = [r.getMessage() for r in caplog.records if r.name == "tests.helper"]
    assert len(lines) == 1 and lines[0].startswith("working on 21 in ")
    assert int(lines[0].split()[-1]) != os.getpid()  # it ran in another process
    with pytest.raises(ValueError, match="bad value in the helper"):
        in_helper(_logs_and_fails)()
    assert "about to fail" in caplog.text


def test_a_helper_that_dies_leaves_the_call_to_this_process(caplog):
    assert in_helper(_dies_unless_in, os.getpid())() == "ran here"
    assert "the helper process failed" in caplog.text
    assert in_helper(_logs_and_returns, 1)() == 2  # a new helper serves the next call


@pytest.mark.parametrize("mapper", ["global", "incremental"])
def test_camera_choices_mapped_in_the_helper_give_the_models_mapped_here(tmp_path, monkeypatch,
                                                                        caplog, mapper):
    """A zoom lens: shared cameras mapped, then refit with a camera per image and kept; both
    calls made in the helper give the models made here."""
    from concurrent.futures import Future

    truth = synthesize_cluster(seed=3, focal_spread=0.2)
    sizes = {name: truth.image_size for name in truth.names}
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    conf = ReconConf(mapper=mapper, camera_sharing="auto")
    here = reconstruct_scene(image_dir, truth.names, truth.keypoints, truth.matches,
                             tmp_path / "here", conf, image_sizes=sizes)
    sent = []

    def in_the_helper(fn, *args):  # as a slot in the helper serves a call
        sent.append(fn.__name__)
        future = Future()
        future.set_result(in_helper(fn, *args)())
        return future

    monkeypatch.setattr(reconstruction, "in_sfm_slot", in_the_helper)
    caplog.set_level(logging.INFO)
    helped = reconstruct_scene(image_dir, truth.names, truth.keypoints, truth.matches,
                               tmp_path / "helped", conf, image_sizes=sizes)
    assert sent == ["_reconstruct_once", "_choose_cameras"]
    assert f"{mapper} mapper, cameras shared by size" in caplog.text  # the helper's log line
    assert helped.cameras == here.cameras and here.cameras.startswith("per image")
    assert [m.poses.keys() for m in helped.models] == [m.poses.keys() for m in here.models]
    for model, other in zip(here.models, helped.models):
        for name, (R_cw, t_cw) in model.poses.items():
            np.testing.assert_array_equal(other.poses[name][0], R_cw)
            np.testing.assert_array_equal(other.poses[name][1], t_cw)
            np.testing.assert_array_equal(other.intrinsics[name], model.intrinsics[name])
        np.testing.assert_array_equal(other.points3D, model.points3D)


_WORKER_WITH_HELPER = """
import multiprocessing, os, sys
from concurrent.futures import ProcessPoolExecutor
sys.path.insert(0, {root!r})
from tests.test_concurrency import _worker_using_the_helper

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        worker, helper, value = pool.submit(_worker_using_the_helper, 20).result()
    assert len({{os.getpid(), worker, helper}}) == 3, (os.getpid(), worker, helper)
    print("done", value)
"""


def _worker_using_the_helper(value):
    """In a spawned worker (as the pipeline's dataset workers are): a call in the helper."""
    helper_pid, doubled = in_helper(_pid_and_double, value)()
    return os.getpid(), helper_pid, doubled


def _pid_and_double(value):
    return os.getpid(), 2 * value


def test_a_worker_process_that_used_the_helper_exits(tmp_path):
    """A dataset worker leaves through multiprocessing's wait for its children: its helper
    must have been told to stop by then, or the run never ends."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER_WITH_HELPER.format(root=str(Path(__file__).parents[1])))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done 40"


def test_a_helpers_failure_carries_its_traceback_and_its_cpu_is_counted(caplog):
    before = concurrency.helper_cpu_seconds()
    with pytest.raises(ValueError) as failure:
        in_helper(_logs_and_fails)()
    notes = "".join(getattr(failure.value, "__notes__", []))
    assert "in the helper process" in notes and "_logs_and_fails" in notes
    assert in_helper(sum, range(3_000_000))() == 3_000_000 * 2_999_999 // 2  # tens of ms
    assert concurrency.helper_cpu_seconds() > before
    # replayed records pass the caller's own level checks
    caplog.set_level(logging.INFO)
    logging.getLogger("tests.helper").setLevel(logging.WARNING)
    try:
        in_helper(_logs_and_returns, 4)()
    finally:
        logging.getLogger("tests.helper").setLevel(logging.NOTSET)
    assert "working on 4" not in caplog.text


_local_calls = {"now": 0, "most": 0}
_local_lock = threading.Lock()


def _pid_after_a_while(value, seconds=0.05):
    """Its process and value, after ``seconds``; counts how many run at once here."""
    with _local_lock:
        _local_calls["now"] += 1
        _local_calls["most"] = max(_local_calls["most"], _local_calls["now"])
    try:
        time.sleep(seconds)
        return os.getpid(), value
    finally:
        with _local_lock:
            _local_calls["now"] -= 1


def _fails_with(value):
    raise ValueError(f"call {value} failed in {os.getpid()}")


def _dies_in_the_helper(value, pid):
    """Kills the helper that runs it; made here instead, it counts as one call here."""
    if os.getpid() != pid:
        os._exit(3)
    return _pid_after_a_while(value)


def test_sfm_slots_run_calls_here_and_in_the_helper_one_here_at_a_time():
    assert concurrency.in_sfm_slot(_pid_after_a_while, 0) is None  # no slots open
    _local_calls["most"] = 0
    with concurrency.sfm_slots() as slots:
        with pytest.raises(RuntimeError, match="already open"):
            with concurrency.sfm_slots():
                pass
        # several threads submit at once, as the pipeline's scenes do
        with ThreadPoolExecutor(4) as scenes:
            futures = list(scenes.map(lambda k: concurrency.in_sfm_slot(_pid_after_a_while, k),
                                      range(12)))
        results = [future.result() for future in futures]
        failed = slots.submit(_fails_with, 3)
        with pytest.raises(ValueError, match="call 3 failed"):
            failed.result()
        assert slots.submit(_pid_after_a_while, 20, 0).result()[1] == 20  # still serving
    assert [value for _, value in results] == list(range(12))
    pids = {pid for pid, _ in results}
    assert os.getpid() in pids and len(pids) == 2  # here and in the helper
    assert _local_calls["most"] == 1  # pycolmap is never run in two threads here
    assert concurrency.in_sfm_slot(_pid_after_a_while, 0) is None  # closed again


def test_sfm_slots_make_a_dead_helpers_calls_here_one_at_a_time(caplog):
    """The helper's slot makes the calls of a helper that died here: still one at a time."""
    _local_calls["most"] = 0
    with concurrency.sfm_slots():
        futures = [concurrency.in_sfm_slot(_dies_in_the_helper, k, os.getpid())
                   for k in range(6)]
        results = [future.result() for future in futures]
    assert results == [(os.getpid(), k) for k in range(6)]
    assert "the helper process failed" in caplog.text
    assert _local_calls["most"] == 1


def test_cancelled_sfm_slot_calls_are_not_made():
    with concurrency.sfm_slots() as slots:
        first = slots.submit(_pid_after_a_while, 0, 0.3)
        second = slots.submit(_pid_after_a_while, 1, 0.3)
        waiting = [slots.submit(_pid_after_a_while, k) for k in range(2, 6)]
        time.sleep(0.1)  # both slots have taken a call
        slots.cancel_waiting()
    assert first.result()[1] == 0 and second.result()[1] == 1
    assert all(future.cancelled() for future in waiting)


def _has_module(name):
    return name in sys.modules


def test_a_prepared_helper_has_imported_the_module_before_the_first_call():
    concurrency.prepare_helper("wave")
    concurrency.prepare_helper("no_such_module_anywhere")  # a failed import harms nothing
    assert in_helper(_has_module, "wave")()
    assert not in_helper(_has_module, "no_such_module_anywhere")()


@pytest.mark.slow
def test_a_pipeline_run_with_the_helper_gives_the_run_without(tmp_path, monkeypatch, threads):
    """A generated dataset (two scenes, outliers) through run_geometric all in this
    process, and with the scenes' SfM calls (mappings, the camera choice's fits) sent to
    whichever of this process and the helper is free: the same predictions to the bit and
    the same scenes table but for its seconds."""
    from src.demo_data import DemoSpec, generate_demo_dataset
    from src.geometric import pipeline
    from src.geometric.pipeline import GeometricConf, run_geometric
    from src.submission import list_test_images

    spec = DemoSpec(train_datasets=1, scenes_per_train_dataset=1, train_views_per_scene=3,
                    test_datasets=1, test_seen_scenes=1, test_unseen_scenes=1,
                    test_views_per_scene=10, outliers_per_dataset=2, seed=14)
    data = generate_demo_dataset(tmp_path / "data", spec)
    images = list_test_images(data)
    threads(2)
    slotted = []
    monkeypatch.setattr(concurrency, "in_helper",
                        lambda fn, *args: slotted.append(
                            (fn.__name__, [a for a in args if isinstance(a, Path)][-1]))
                        or in_helper(fn, *args))
    runs = {}
    for way, scenes_beside in {"alone": False, "scenes": True}.items():
        monkeypatch.setattr(pipeline, "helper_wanted", lambda: scenes_beside)
        runs[way] = run_geometric(images, data / "test", GeometricConf(workers=1),
                                  tmp_path / f"cache-{way}")
        if way == "alone":
            assert not slotted
    alone, _, scenes_alone = runs["alone"]
    # scenes side by side: their calls went to the slots, some to the helper's
    assert len(scenes_alone) >= 2 and slotted
    folders = {f"{GeometricConf().reconstruction.cache_key()}-{scene}"
               for scene in scenes_alone["graph_scene"]}
    assert all(folders & set(path.parts) for _, path in slotted)
    helped, _, scenes_helped = runs["scenes"]
    for a, b in zip(alone, helped):
        assert (a.dataset, a.image, a.scene) == (b.dataset, b.image, b.scene)
        np.testing.assert_array_equal(a.R_cw, b.R_cw)
        np.testing.assert_array_equal(a.t_cw, b.t_cw)
    pd.testing.assert_frame_equal(scenes_alone.drop(columns="seconds"),
                                  scenes_helped.drop(columns="seconds"))
    assert sum(p.scene != "outliers" for p in alone) >= 15


_WORKER_KILLED = """
import os, sys, time
sys.path.insert(0, {root!r})
from src.geometric.concurrency import in_helper

if __name__ == "__main__":
    print(in_helper(os.getpid)(), flush=True)
    time.sleep(600)  # killed by the test
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a process that ended but was not reaped yet is a zombie: gone for our purpose
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "zombie" in status.read_text())


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see a process's state")
def test_the_helper_ends_when_its_process_is_killed(tmp_path):
    """A dataset worker killed (for memory, say) never shuts its helper down: the helper
    notices its parent is gone and ends."""
    import signal
    import time

    script = tmp_path / "worker.py"
    script.write_text(_WORKER_KILLED.format(root=str(Path(__file__).parents[1])))
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        helper = int(worker.stdout.readline())
        assert helper != worker.pid and _alive(helper)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    deadline = time.monotonic() + 60
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(helper)


# --------------------------------------------------------------------------- spawning
@pytest.fixture
def main_module(monkeypatch):
    """This process's __main__ given the spec and file of another kind of program."""
    monkeypatch.setattr(concurrency, "_spawn_warned", False)
    main = sys.modules["__main__"]

    def as_program(spec_name, path, has_spec=False):
        spec = type("Spec", (), {"name": spec_name})() if spec_name or has_spec else None
        monkeypatch.setattr(main, "__spec__", spec, raising=False)
        if path is None:
            monkeypatch.delattr(main, "__file__", raising=False)
        else:
            monkeypatch.setattr(main, "__file__", path, raising=False)
    return as_program


def test_processes_are_spawned_only_where_they_can_import_the_program(main_module, tmp_path,
                                                                      threads, caplog,
                                                                      monkeypatch):
    from src.geometric.pipeline import GeometricConf, dataset_workers

    script = tmp_path / "run.py"
    script.write_text("")
    threads(2)
    monkeypatch.setattr(multiprocessing.process, "ORIGINAL_DIR", str(tmp_path))
    # python -m, an interactive session, a script file, one given relative to the folder
    # multiprocessing started in
    for spec_name, path in (("mypackage.run", "<stdin>"), (None, None), (None, str(script)),
                            (None, "run.py")):
        main_module(spec_name, path)
        assert concurrency.spawn_possible() and concurrency.helper_wanted()
        assert dataset_workers(GeometricConf(workers=2), 3) == 2
    # python - <<EOF (its spec has no name), a script deleted since
    with caplog.at_level(logging.WARNING):
        for path in ("<stdin>", str(tmp_path / "deleted.py")):
            main_module(None, path, has_spec=True)
            assert not concurrency.spawn_possible() and not concurrency.helper_wanted()
            assert dataset_workers(GeometricConf(workers=2), 3) == 1
    assert caplog.text.count("is not a file that a new process could import") == 1


_FROM_STDIN = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from src.geometric.pipeline import GeometricConf, run_geometric
from src.submission import list_test_images

data = Path({data!r})
predictions, _, _ = run_geometric(list_test_images(data), data / "test",
                                  GeometricConf(workers=2), Path({cache!r}))
print("done", len(predictions))
"""


@pytest.mark.slow
def test_a_script_read_from_standard_input_runs_in_one_process(tmp_path):
    """Spawned processes import the program's file, which ``python - <<EOF`` does not have:
    its datasets run one after the other here, with a warning and no dead processes."""
    from src.demo_data import DemoSpec, generate_demo_dataset

    spec = DemoSpec(train_datasets=1, scenes_per_train_dataset=1, train_views_per_scene=3,
                    test_datasets=2, test_seen_scenes=1, test_unseen_scenes=0,
                    test_views_per_scene=6, outliers_per_dataset=1, seed=15)
    data = generate_demo_dataset(tmp_path / "data", spec)
    script = _FROM_STDIN.format(root=str(Path(__file__).parents[1]), data=str(data),
                                cache=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done 14"
    assert "Traceback" not in done.stderr
    assert "the helper process failed" not in done.stderr  # never tried, not fallen back
    assert done.stderr.count("is not a file that a new process could import") == 1
