"""The viewer: a run folder's clusters, cameras, matches and scores, and the geometric
pipeline on uploaded photos.

    streamlit run src/viewer/app.py -- --run outputs/cpu-demo-geometric

Pages: overview, dataset, cameras, pair, upload; each can be opened by URL, e.g.
``?page=cameras&dataset=demo_test_a&cluster=cluster0`` (also ``run=`` and ``pair=A|B``).
A thin layer: everything it shows comes from ``src.viewer`` (data, figures, uploads), which
call the project's own loaders, scorer and pipeline; run folders are only read, uploads go
to a new run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `streamlit run src/viewer/app.py` puts src/, not the repository, first
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from src.viewer import data, figures, uploads  # noqa: E402
from src.geometric.matching import load_matched_features  # noqa: E402
from src.data_io import DataError, read_image_rgb  # noqa: E402
from src.submission import OUTLIER_SCENE  # noqa: E402

PAGES = {"overview": "Overview", "dataset": "Dataset", "cameras": "Cameras in 3D",
         "pair": "A pair", "upload": "Run on uploads"}
THUMB_SIDE = 160


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlit run src/viewer/app.py --")
    parser.add_argument("--run", type=Path, default=None,
                        help="run folder to open (default: the newest under outputs/)")
    parser.add_argument("--uploads-dir", type=Path, default=Path("outputs"),
                        help="where runs on uploaded photos are written (default: outputs)")
    args, _unknown = parser.parse_known_args(argv)
    return args


# =========================================================================== cached loading
# Keys carry the run's stamp (submission.csv's mtime), so a rewritten run is read afresh.
@st.cache_data(show_spinner="Reading the run...")
def load_run(run_dir: str, stamp: float) -> data.RunData:
    return data.load_run(run_dir)


@st.cache_data(show_spinner="Scoring...")
def score_run(run_dir: str, stamp: float):
    return data.score_run(load_run(run_dir, stamp))


@st.cache_data(show_spinner=False)
def ground_truth(run_dir: str, stamp: float):
    return data.load_ground_truth(load_run(run_dir, stamp))


@st.cache_data(show_spinner="Making thumbnails...")
def gallery(run_dir: str, stamp: float, dataset: str) -> list:
    """The dataset's cluster groups and their framed thumbnails as JPEG bytes (encoded once:
    re-encoding 100 arrays on every rerun is what made the page slow)."""
    run = load_run(run_dir, stamp)
    groups = data.cluster_groups(run, dataset, ground_truth(run_dir, stamp),
                                   score_run(run_dir, stamp))
    return [(group, [figures.encode_jpeg(figures.framed(
                figures.thumbnail(run.image_path(dataset, name), THUMB_SIDE), ok))
             for name, ok in zip(group.images, group.correct or [None] * len(group.images))])
            for group in groups]


@st.cache_resource(show_spinner="Loading the SfM models...")
def sfm_models(run_dir: str, stamp: float, dataset: str):
    return data.load_sfm_models(run_dir, dataset)


@st.cache_data(show_spinner="Aligning to the ground truth...")
def alignment(run_dir: str, stamp: float, dataset: str, cluster: str, scene: str):
    return data.align_cluster(load_run(run_dir, stamp), ground_truth(run_dir, stamp),
                                dataset, cluster, scene)


@st.cache_resource(show_spinner="Loading the features...")
def features(path: str, matches_path: str, mtime: float):
    """The keypoints the matches of ``matches_path`` index (turned detections included)."""
    return load_matched_features(path, matches_path)


@st.cache_data(show_spinner=False)
def pair_table(path: str, mtime: float) -> pd.DataFrame:
    return data.pair_table(Path(path))


@st.cache_data(show_spinner=False)
def full_image(path: str, mtime: float):
    return read_image_rgb(path)


# =========================================================================== navigation
def query_default(key: str, options: list[str], fallback: str | None = None) -> None:
    """Seed a widget's session value from the URL the first time the page is opened."""
    if key not in st.session_state or st.session_state[key] not in options:
        wanted = st.query_params.get(key)
        st.session_state[key] = wanted if wanted in options else (fallback or options[0])


def choose(label: str, key: str, options: list[str], where=st, **kwargs) -> str:
    """A selectbox whose value lives in the URL too, so every view can be linked."""
    query_default(key, options)
    value = where.selectbox(label, options, key=key, **kwargs)
    st.query_params[key] = value
    return value


def run_options(args: argparse.Namespace) -> list[str]:
    runs = [str(p) for p in data.find_runs(args.run.parent if args.run else Path("outputs"))]
    runs += [str(p) for p in data.find_runs(args.uploads_dir)]
    for extra in [st.session_state.get("upload_run"), str(args.run) if args.run else None,
                  st.query_params.get("run")]:
        if extra and extra not in runs and (Path(extra) / data.SUBMISSION_FILE).is_file():
            runs.insert(0, extra)
    if args.run and str(args.run) in runs:  # the run named on the command line comes first
        runs.remove(str(args.run))
        runs.insert(0, str(args.run))
    return list(dict.fromkeys(runs))


# =========================================================================== pages
def page_overview(run_dir: str, stamp: float) -> None:
    run = load_run(run_dir, stamp)
    report = score_run(run_dir, stamp)
    st.title(f"Run {Path(run_dir).name}")
    st.caption(f"{run.pipeline} pipeline, preset {run.config.get('preset', '?')}; input "
               f"{run.data_dir or 'not found'}; "
               + ("scored against its test labels" if report else "no test labels: no score"))
    overview = data.dataset_overview(run)
    columns = st.columns(5 if report else 4)
    columns[0].metric("datasets", len(overview))
    columns[1].metric("images", int(overview["images"].sum()))
    columns[2].metric("clusters", int(overview["clusters"].sum()))
    columns[3].metric("outliers", int(overview["outliers"].sum()))
    if report:
        columns[4].metric("IMC 2025 score", f"{report.score:.2f}",
                          help=f"mAA {report.mAA:.2f}, clustering {report.clusterness:.2f}")
        scores = report.per_dataset[["dataset", "mAA", "clusterness", "score"]]
        overview = overview.merge(scores, on="dataset", how="left")
    st.subheader("Datasets")
    st.dataframe(overview, hide_index=True, column_config={
        name: st.column_config.NumberColumn(format="%.2f")
        for name in ("mAA", "clusterness", "score")})
    if report:
        st.caption(f"Overall: score {report.score:.2f}, mAA {report.mAA:.2f}, clustering "
                   f"{report.clusterness:.2f} (src.evaluation, the IMC 2025 metric)")
    st.subheader("Time per stage")
    if run.timings is not None:
        st.bar_chart(run.timings, x="stage", y="seconds", horizontal=True, sort=False,
                     x_label="stage", y_label="seconds", height=80 + 28 * len(run.timings))
    if run.stage_seconds is not None:
        st.caption("Geometric stages per dataset, seconds")
        st.dataframe(run.stage_seconds.round(2), hide_index=True)
    if run.timings is None and run.stage_seconds is None:
        st.info("This run has no timings.csv.")


def page_dataset(run_dir: str, stamp: float, dataset: str) -> None:
    run = load_run(run_dir, stamp)
    truth = ground_truth(run_dir, stamp)
    groups = gallery(run_dir, stamp, dataset)
    n_clusters = sum(not g.is_outliers for g, _ in groups)
    st.title(dataset)
    st.caption(f"{len(run.rows(dataset))} images in {n_clusters} cluster(s)"
               + (", thumbnails framed green where the image belongs to the cluster's "
                  "ground-truth scene, red where not" if truth else ""))
    report = score_run(run_dir, stamp)
    scored_on = {} if report is None else {
        row.scene: row.cluster for row in report.per_scene.itertuples() if row.dataset == dataset}
    for group, thumbs in groups:
        title = f"{group.name} · {len(group.images)} image(s)"
        if group.correct is not None:
            title += f" · {sum(group.correct)}/{len(group.correct)} right"
        if group.is_outliers:
            st.divider()
        st.subheader(title)
        if group.expected_scene is not None and not group.is_outliers:
            note = f"ground-truth scene: {group.expected_scene}"
            other = scored_on.get(group.expected_scene)
            if other is not None and other != group.name:
                # The scene is split over clusters; the metric pairs it with one of them only.
                note += (f" (split: the scorer pairs this scene with {other}, so these images "
                         "earn it no mAA)")
            st.caption(note)
        correct = group.correct or [None] * len(group.images)
        truth_names = group.truth or [None] * len(group.images)
        captions = [name if scene is None else f"{'✓' if ok else '✗'} {name} ({scene})"
                    for name, scene, ok in zip(group.images, truth_names, correct)]
        st.image(thumbs, caption=captions, width=THUMB_SIDE)


def page_cameras(run_dir: str, stamp: float, dataset: str) -> None:
    run = load_run(run_dir, stamp)
    st.title(f"{dataset}: cameras in 3D")
    clusters = data.posed_clusters(run, dataset)
    if not clusters:
        st.info("No cluster of this dataset has a posed camera.")
        return
    cluster = choose("Cluster", "cluster", clusters)
    rows = data.cluster_rows(run, dataset, cluster)
    names = list(run.predictions["image"].iloc[rows])
    found = data.model_for_cluster(sfm_models(run_dir, stamp, dataset), names,
                                     run.R_cw[rows], run.t_cw[rows])
    points = found[1].points3D if found else None
    unposed = len(data.cluster_rows(run, dataset, cluster, posed_only=False)) - len(rows)
    truth = ground_truth(run_dir, stamp)
    left, right = st.columns(2) if truth else (st.container(), None)
    with left:
        st.subheader(f"{cluster}: predicted")
        st.caption(f"{len(rows)} posed camera(s)" + (f", {unposed} without a pose" if unposed else "")
                   + (f"; {len(points)} sparse points from {found[0].relative_to(run.run_dir)}"
                      if found else "; no SfM model cached for this cluster"))
        st.plotly_chart(figures.cameras_figure(run.centers[rows], run.R_cw[rows], names, points),
                        key=f"predicted_{dataset}")
    if truth is None:
        return
    expected = {g.name: g.expected_scene for g in data.cluster_groups(
        run, dataset, truth, score_run(run_dir, stamp))}[cluster]
    # A cluster may hold cameras of several scenes (the scorer pairs it with each it shares
    # most with); the one it stands for comes first.
    counts = truth.scenes.iloc[rows].value_counts()
    scenes = [s for s in counts.index if s != OUTLIER_SCENE and counts[s] >= 3]
    scenes.sort(key=lambda s: s != expected)
    with right:
        if not scenes:
            st.subheader("aligned to the ground truth")
            st.info(f"Fewer than 3 posed cameras of {cluster} share a ground-truth scene: no "
                    "similarity to align them with.")
            return
        st.subheader("aligned to the ground truth")
        scene = choose("Ground-truth scene", f"scene_{cluster}", scenes) if len(scenes) > 1 \
            else scenes[0]
        aligned = alignment(run_dir, stamp, dataset, cluster, scene)
        st.caption(f"Scene {scene}. Similarity (scale {aligned.scale:.3g}) fitted on the cameras the scorer "
                   f"registers within its loosest threshold, {aligned.threshold:.3g}")
        st.plotly_chart(figures.alignment_figure(aligned), key=f"aligned_{dataset}")
    st.subheader("Per-image centre error")
    st.dataframe(data.alignment_table(aligned), hide_index=True, column_config={
        "centre error": st.column_config.NumberColumn(format="%.4g")})
    st.caption("Distances in the ground truth's units. Cameras the scorer registers per "
               "threshold: " + ", ".join(f"{n}/{len(aligned.images)} within {t:.3g}"
                                         for t, n in zip(aligned.thresholds, aligned.within)))


def page_pair(run_dir: str, stamp: float, dataset: str) -> None:
    run = load_run(run_dir, stamp)
    st.title(f"{dataset}: a pair")
    match_files = data.cache_files(run_dir, dataset, "matches")
    feature_files = data.cache_files(run_dir, dataset, "features")
    if not match_files or not feature_files:
        st.info("This run holds no cached matches for this dataset (only the geometric and "
                "hybrid pipelines match image pairs).")
        return
    by_name = {p.name: p for p in match_files}
    matches_path = by_name[choose("Matches cache", "matches", list(by_name))] \
        if len(by_name) > 1 else match_files[0]
    features_path = data.features_file_for(matches_path, feature_files)
    table = pair_table(str(matches_path), matches_path.stat().st_mtime)
    if table.empty:
        st.info(f"{matches_path.name} holds no pair.")
        return
    labels = {f"{a}|{b}": f"{a} ↔ {b} · {n} inliers"
              for a, b, n in table.itertuples(index=False)}
    key = choose("Pair (most inliers first)", "pair", list(labels), format_func=labels.get)
    image_a, image_b = key.split("|")
    pair = data.load_pair_view(matches_path,
                                 features(str(features_path), str(matches_path),
                                          max(features_path.stat().st_mtime,
                                              matches_path.stat().st_mtime)),
                                 image_a, image_b)
    columns = st.columns(3)
    columns[0].metric("verified inliers", len(pair.inliers))
    columns[1].metric("rejected matches", len(pair.rejected))
    columns[2].metric("putative matches", len(pair.inliers) + len(pair.rejected))
    images = []
    for name in (image_a, image_b):
        path = run.image_path(dataset, name)
        images.append(full_image(str(path), path.stat().st_mtime) if path and path.is_file()
                      else figures.thumbnail(None, 320))
    st.image(figures.draw_matches(images[0], images[1], pair),
             caption=f"{image_a} (left), {image_b} (right): verified inliers green, rejected "
                     "matches red")
    st.subheader("Relative pose (camera b from camera a)")
    poses = data.relative_pose_table(run, ground_truth(run_dir, stamp), dataset, image_a,
                                       image_b)
    if poses is None:
        st.info("No relative pose: the two images are not posed in the same cluster.")
    else:
        st.dataframe(poses, hide_index=True, column_config={
            "rotation (deg)": st.column_config.NumberColumn(format="%.2f")})
    st.caption(f"matches: {matches_path.name}; features: {features_path.name}")


def page_upload(args: argparse.Namespace) -> None:
    st.title("Run on uploads")
    st.caption(f"Photos (PNG, JPEG, or any format OpenCV reads) or a zip of them; the geometric "
               f"pipeline runs on them in a new run folder under {args.uploads_dir}/.")
    files = st.file_uploader("Photos or a zip", accept_multiple_files=True, key="uploads")
    if st.button("Run the geometric pipeline", disabled=not files, type="primary"):
        bar = st.progress(0.0, text="starting")
        staged, new_run = uploads.run_on_uploads(
            [(f.name, f.getvalue()) for f in files], args.uploads_dir,
            progress=lambda fraction, text: bar.progress(min(fraction, 1.0), text=text[:150]))
        st.session_state["upload_result"] = (staged.accepted, staged.rejected,
                                             str(new_run) if new_run else None)
        if new_run:
            st.session_state["upload_run"] = str(new_run)
    if "upload_result" not in st.session_state:
        return
    accepted, rejected, new_run = st.session_state["upload_result"]
    if rejected:
        st.warning("Skipped {} file(s):\n\n".format(len(rejected)) + "\n".join(
            f"- **{name}**: {why}" for name, why in rejected))
    if new_run is None:
        st.error("None of the uploaded files is a readable image; nothing was run.")
        return
    stamp = data.run_stamp(new_run)
    run = load_run(new_run, stamp)
    overview = data.dataset_overview(run)
    st.success(f"{len(accepted)} image(s) processed: {int(overview['clusters'].sum())} "
               f"cluster(s), {int(overview['outliers'].sum())} outlier(s). Run folder: {new_run} "
               "(choose it in the sidebar to see every page).")
    for dataset in run.datasets:
        page_dataset(new_run, stamp, dataset)
        if data.posed_clusters(run, dataset):
            page_cameras(new_run, stamp, dataset)


def main() -> None:
    st.set_page_config(page_title="IMC 2025 viewer", layout="wide")
    args = parse_args(sys.argv[1:])
    runs = run_options(args)
    st.sidebar.title("IMC 2025 viewer")
    query_default("page", list(PAGES))
    page = st.sidebar.radio("Page", list(PAGES), format_func=PAGES.get, key="page")
    st.query_params["page"] = page
    if args.run and not (args.run / data.SUBMISSION_FILE).is_file():
        st.sidebar.warning(f"--run {args.run}: not a run folder (no submission.csv there); "
                           "run `python main.py --pipeline geometric` first")
    if page == "upload":
        page_upload(args)
        return
    if not runs:
        st.error("No run folder found: start the app with `-- --run outputs/<run>` "
                 "(a folder holding submission.csv), or run on uploads.")
        return
    run_dir = choose("Run folder", "run", runs, where=st.sidebar)
    stamp = data.run_stamp(run_dir)
    run = load_run(run_dir, stamp)
    if page == "overview":
        page_overview(run_dir, stamp)
        return
    dataset = choose("Dataset", "dataset", run.datasets, where=st.sidebar)
    try:
        {"dataset": page_dataset, "cameras": page_cameras, "pair": page_pair}[page](
            run_dir, stamp, dataset)
    except DataError as error:  # a damaged cache or table: name it instead of a traceback
        st.error(f"This page cannot be shown: {error}")


main()
