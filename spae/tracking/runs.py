"""One W&B run per trained model: a training stage (SPAE/LQAE tokenizer, Frozen encoder, embedded CLIP) logs its
curves, pyramid images and final weights to its own run, named `<method>-<stage>-<stage key>`, job_type
"train", in the bench run's group; the bench run (job_type "eval") keeps the evaluation. Two models trained
inside one bench (SPAE and LQAE in a few-shot run) no longer share one run and its `train/*` keys.

Without W&B (logger=csv|none, or no bench logger: DDP workers, tests) the same object hands out the CSV
logger or nothing, so the stages call it unconditionally.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

STEP_AXIS = "trainer/global_step"  # Lightning's optimizer-step counter (tokenizers step two optimisers a batch)
STEP_AXIS_KEYS = ("train/*", "clip/*", "images/*")
DEFAULT_IMAGE_COUNT = 4


def run_name(method: str, stage: str, key: str) -> str:
    return f"{method}-{stage}-{key}"


class TrainingRun:
    def __init__(self, bench: Any, stage: str, method: str, key: str, wandb_run: Any = None):
        self.bench, self.stage, self.method, self.key = bench, stage, method, key
        self.wandb_run = wandb_run

    @classmethod
    def start(cls, bench: Any, stage: str, method: str, key: str, cfg: dict) -> "TrainingRun":
        """A W&B run when the bench logs to W&B, else a run that only hands out the bench's file logger."""
        if bench is None or bench.kind != "wandb" or getattr(bench, "_wandb_run", None) is None:
            return cls(bench, stage, method, key)
        from spae.logging_utils import init_wandb, redact

        name = run_name(method, stage, key)
        config = {**redact(cfg), "tracking": {"stage": stage, "stage_key": key, "method": method}}
        run = init_wandb(cfg, bench.run_dir, name=name, run_id=f"{stage}-{method}-{key}",
                         group=bench.group, job_type="train",
                         config=config, reinit="create_new")
        run.define_metric(STEP_AXIS)
        for pattern in STEP_AXIS_KEYS:
            run.define_metric(pattern, step_metric=STEP_AXIS)
        log.info("W&B run %s (group %s) for stage %s", name, bench.group, stage)
        return cls(bench, stage, method, key, run)

    @property
    def active(self) -> bool:
        return self.wandb_run is not None

    def lightning_logger(self, save_dir: Path) -> Any:
        """Lightning's logger for this model: W&B into this run, CSV beside the stage's artefacts, or False."""
        from pytorch_lightning.loggers import CSVLogger, WandbLogger

        if self.wandb_run is not None:
            return WandbLogger(experiment=self.wandb_run, save_dir=str(save_dir))
        if self.bench is not None and self.bench.kind in ("csv", "wandb"):
            return CSVLogger(save_dir=str(save_dir), name="logs")
        return False

    def image_callback(self, dataset: Any, logger_cfg: dict | None) -> Any:
        """The pyramid-image callback (spae.tracking.callbacks) when images go to W&B at an interval > 0."""
        every = int((logger_cfg or {}).get("image_every_n_steps") or 0)
        if self.wandb_run is None or every <= 0:
            return None
        from spae.tracking.callbacks import PyramidImageLogger, fixed_images

        count = int((logger_cfg or {}).get("image_count") or DEFAULT_IMAGE_COUNT)
        return PyramidImageLogger(fixed_images(dataset, count), self.log_images, every)

    def log_images(self, panels: dict[str, list], step: int) -> None:
        """panels: {key: [(PIL image, caption), ...]} logged as W&B image lists at `step` (trainer/global_step)."""
        import wandb

        self.wandb_run.log({**{key: [wandb.Image(image, caption=text) for image, text in items]
                               for key, items in panels.items()}, STEP_AXIS: step})

    def log_checkpoint(self, files: Sequence[Path], summary: dict | None = None) -> None:
        """The final weights as a `model` artifact named like the run, with the stage key in its metadata. Offline
        the artifact is recorded in the offline run and uploaded by `wandb sync`; the files are referenced in
        place (immutable: a finished stage's files never change), not copied."""
        if self.wandb_run is None:
            return
        import wandb

        metadata = {"stage": self.stage, "stage_key": self.key, "method": self.method, "group": self.bench.group,
                    **({"summary": _scalars(summary)} if summary else {})}
        artifact = wandb.Artifact(run_name(self.method, self.stage, self.key), type="model", metadata=metadata)
        for path in files:
            artifact.add_file(str(path), policy="immutable")
        self.wandb_run.log_artifact(artifact)

    def finish(self, summary: dict | None = None, exit_code: int = 0) -> None:
        """End the run (once); the summary's scalars become the run's W&B summary."""
        if self.wandb_run is None:
            return
        if summary:
            self.wandb_run.summary.update({f"{self.stage}/{k}": v for k, v in _scalars(summary).items()})
        self.wandb_run.finish(exit_code=exit_code)
        self.wandb_run = None


def training_run(bench: Any, stage: str, method: str, out_dir: Path, cfg: dict) -> TrainingRun:
    """The training run of a stage whose cache folder is out_dir (its name is the stage key)."""
    if bench is None:
        return TrainingRun(None, stage, method, Path(out_dir).name)
    return bench.training_run(stage, method, Path(out_dir).name, cfg)


def _scalars(summary: dict) -> dict:
    """The summary's numbers and short texts (the Markdown report and nested tables stay in the stage folder)."""
    return {k: v for k, v in summary.items()
            if isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= 200)}
