"""A run's folder, its log and the time spent per stage."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pandas as pd

from config import Config
from src.utils_io import atomic_path, write_csv_atomic

log = logging.getLogger("imc")


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr as `HH:MM:SS stage message`; idempotent."""
    root = logging.getLogger()
    if not any(getattr(h, "_imc", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._imc = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


@dataclass
class RunContext:
    """Where a run writes, and how long each of its stages took."""

    run_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: Config) -> "RunContext":
        """Make ``output_dir/<run_name>`` (default: preset + timestamp) and save the config."""
        name = cfg.run_name or f"{cfg.preset}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path(cfg.output_dir) / name
        run_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(run_dir / "run.log")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(file_handler)
        with atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
        log.info("run folder: %s (preset %s)", run_dir, cfg.preset)
        return cls(run_dir=run_dir)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Announce a stage, time it, and save the running table of stage times."""
        log.info("== %s", name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            log.info("== %s done in %.1f s", name, self.timings[name])
            write_csv_atomic(pd.DataFrame({"stage": list(self.timings),
                                           "seconds": list(self.timings.values())}),
                             self.run_dir / "timings.csv")
