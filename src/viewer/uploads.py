"""The viewer's "run on uploads": photos (or zips of them) laid out as a competition input
inside a new run folder, then the same geometric stage, submission and plots a
``python main.py --pipeline geometric`` run makes, with progress reported as it goes.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from src.data_io import IMAGE_SUFFIXES, DataError, decode_image_file, read_image_rgb, write_image_rgb

UPLOAD_DATASET = "uploads"


@dataclass
class StagedUploads:
    """Uploaded files laid out as ``data_dir/test/<dataset>/``: the images kept, and the
    files skipped with the reason."""

    data_dir: Path
    accepted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def _unzipped(files: Iterable[tuple[str, bytes]], rejected: list[tuple[str, str]]
              ) -> Iterable[tuple[str, bytes]]:
    """The uploads with every zip replaced by its files (folders and macOS metadata left out)."""
    for name, data in files:
        if not name.lower().endswith(".zip"):
            yield name, data
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.infolist():
                    inner = Path(member.filename)
                    if member.is_dir() or "__MACOSX" in inner.parts or inner.name.startswith("."):
                        continue
                    yield f"{name}/{member.filename}", archive.read(member)
        except (zipfile.BadZipFile, OSError) as error:
            rejected.append((name, f"not a readable zip file ({error})"))


def stage_uploads(files: Iterable[tuple[str, bytes]], data_dir: str | Path,
                  dataset: str = UPLOAD_DATASET) -> StagedUploads:
    """Write uploaded files (name, bytes) as the test images of one dataset, keeping only
    what the project's image decoder reads.

    Zips are unpacked; images in another format OpenCV reads (BMP, TIFF, WebP...) are saved
    as PNG, since the pipeline lists PNG/JPEG files only; anything else is skipped and named
    in ``rejected``. Names that repeat get a numeric suffix.
    """
    staged = StagedUploads(Path(data_dir))
    folder = staged.data_dir / "test" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    for upload_name, data in _unzipped(files, staged.rejected):
        stem, suffix = Path(upload_name).stem, Path(upload_name).suffix
        target_suffix = suffix if suffix in IMAGE_SUFFIXES else ".png"
        name = f"{stem}{target_suffix}"
        k = 1
        while (folder / name).exists():
            name, k = f"{stem}-{k}{target_suffix}", k + 1
        path = folder / name
        path.write_bytes(data)
        try:
            decode_image_file(path)
            if suffix not in IMAGE_SUFFIXES:
                write_image_rgb(path, read_image_rgb(path))
        except (DataError, OSError) as error:
            path.unlink()
            reason = ("cannot be decoded as an image (corrupt, or not an image file)"
                      if isinstance(error, DataError) else str(error))
            staged.rejected.append((upload_name, reason))
            continue
        staged.accepted.append(name)
    return staged


# Module loggers of the pipeline's stages, and how far along a run is when each speaks.
STAGE_PROGRESS = {"src.geometric.features": 0.2, "src.geometric.pairs": 0.35, "src.geometric.matching": 0.45,
                  "src.geometric.scene_graph": 0.6, "src.geometric.pipeline": 0.65, "src.geometric.reconstruction": 0.8}


class _ProgressHandler(logging.Handler):
    """Turns the pipeline's log messages into progress reports (fraction, message)."""

    def __init__(self, report: Callable[[float, str], None]) -> None:
        super().__init__(logging.INFO)
        self.report, self.fraction = report, 0.05

    def emit(self, record: logging.LogRecord) -> None:
        self.fraction = max(self.fraction, STAGE_PROGRESS.get(record.name, self.fraction))
        try:
            self.report(self.fraction, record.getMessage())
        except Exception:  # a broken progress display must not stop the run
            self.handleError(record)


def new_upload_run_name(output_dir: Path) -> str:
    """``uploads-<date>-<time>``, with a suffix if that folder exists already."""
    base = time.strftime("uploads-%Y%m%d-%H%M%S")
    name, k = base, 1
    while (Path(output_dir) / name).exists():
        name, k = f"{base}-{k}", k + 1
    return name


def run_on_uploads(files: Iterable[tuple[str, bytes]], output_dir: str | Path,
                   progress: Callable[[float, str], None] | None = None,
                   preset: str = "cpu-demo", **overrides) -> tuple[StagedUploads, Path | None]:
    """Run the geometric pipeline on uploaded photos in a new run folder
    ``output_dir/uploads-<time>/`` (its input in ``input/``); returns what was staged and the
    run folder (None when no upload is a readable image).

    The stages are main.py's for a geometric run on unlabelled data: the run folder and its
    config, ``run_geometric``, then the validated submission.
    """
    from config import get_config
    from src.geometric.pipeline import GeometricConf, predict_geometric
    from src.plots import plot_run_results
    from src.run_context import RunContext, setup_logging
    from src.submission import list_test_images, write_run_submission

    report = progress or (lambda fraction, text: None)
    output_dir = Path(output_dir)
    run_name = new_upload_run_name(output_dir)
    data_dir = output_dir / run_name / "input"
    report(0.02, "checking the uploaded files")
    staged = stage_uploads(files, data_dir)
    if not staged.accepted:
        return staged, None
    cfg = get_config(preset, **{**overrides, "pipeline": "geometric", "data_dir": str(data_dir),
                                "output_dir": str(output_dir), "run_name": run_name})
    setup_logging()
    handler = _ProgressHandler(report)
    stage_logger = logging.getLogger("src")
    stage_logger.addHandler(handler)
    try:
        ctx = RunContext.create(cfg)
        test_images = list_test_images(data_dir)
        with ctx.stage("geometric"):
            predictions, table = predict_geometric(test_images, data_dir / "test",
                                                   GeometricConf.from_config(cfg), ctx.run_dir,
                                                   cfg.overwrite)
        with ctx.stage("submission"):
            write_run_submission(predictions, test_images, ctx.run_dir)
        with ctx.stage("plots"):
            plot_run_results(table, table["scene"], data_dir / "test", ctx.run_dir / "plots")
    finally:
        stage_logger.removeHandler(handler)
    report(1.0, f"done: {ctx.run_dir}")
    return staged, ctx.run_dir
