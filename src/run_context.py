"""A run's folder, its log and the time spent per stage."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd

from config import Config, ConfigError, get_config, resumable_fields
from src.data_io import atomic_path, write_csv_atomic

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


def _log_to_file(path: Path) -> None:
    """Send the log to this run's file only: a second run in the same process (tests,
    notebooks) must not keep writing into the first run's log."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_imc_run", False)]:
        root.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler._imc_run = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Fields whose values differ between a saved run's config and this one, leaving out
    those that may change on resumption (``resumable`` in config.Config)."""
    keys = (set(saved) | set(current)) - resumable_fields()
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def default_run_name(cfg: Config) -> str:
    """The preset's name, plus the pipeline's when it is not the learned one, plus the data
    folder's name when it is not the preset's own: runs on other data get their own folder
    instead of colliding with the demo run."""
    name = cfg.preset if cfg.pipeline == "learned" else f"{cfg.preset}-{cfg.pipeline}"
    preset_data = get_config(cfg.preset).data_dir if cfg.preset else cfg.data_dir
    if Path(cfg.data_dir).resolve() != Path(preset_data).resolve():
        name += f"-{Path(cfg.data_dir).resolve().name}"
    return name


@dataclass
class RunContext:
    """Where a run writes, and how long each of its stages took."""

    run_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: Config, stage: str = "all") -> "RunContext":
        """Make or reopen ``output_dir/<run_name>`` (default: :func:`default_run_name`).

        Reopening a folder resumes its run, so it must hold the same training configuration;
        ``overwrite`` starts it afresh instead. The ``infer`` stage only reads the trained
        model, so it may change anything (its configuration goes to ``config_infer.json``).
        """
        run_dir = Path(cfg.output_dir) / (cfg.run_name or default_run_name(cfg))
        saved = run_dir / "config.json"
        if cfg.overwrite and run_dir.exists():
            log.info("overwrite: removing the earlier run in %s", run_dir)
            shutil.rmtree(run_dir)
        elif saved.is_file() and stage != "infer":
            differs = config_differences(json.loads(saved.read_text()), cfg.to_dict())
            if differs:
                raise ConfigError(
                    f"{run_dir} holds a run with another configuration ({', '.join(differs)}); "
                    f"pass --run-name NEW for a new run or --overwrite to replace it")
            log.info("resuming the run in %s", run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _log_to_file(run_dir / "run.log")
        with atomic_path(run_dir / ("config_infer.json" if stage == "infer" else "config.json")) as tmp:
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
