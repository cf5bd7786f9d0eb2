"""One logging facade per run: W&B (offline by default, online on request), CSV, or nothing.

The bench run (job_type "eval") receives the evaluation stages' metrics, tables and images, so W&B holds
exactly the numbers of results.json; each training stage opens its own run in the same group through
`training_run()` (spae.tracking.runs), so two models trained in one bench never share curves.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from spae.errors import InvalidConfigError

log = logging.getLogger(__name__)


class ConfigConflictError(InvalidConfigError):
    """Two config choices that cannot hold together (e.g. online W&B in offline mode)."""

# A key names a secret when its last word is one of these (hf_token, api_key, OPENAI_API_KEY, password),
# so that max_new_tokens or token_ids are not taken for secrets; *_env keys hold variable names.
_SECRET_PATTERN = re.compile(r"(^|[_\-.])(api[_-]?key|apikey|access[_-]?key|secret([_-]?key)?|token|password|passwd)$",
                             re.IGNORECASE)
_MIN_SECRET_CHARS = 8  # shorter environment values are too common to be told apart from ordinary text


def is_secret_key(key: Any) -> bool:
    return bool(_SECRET_PATTERN.search(str(key)))


def redact(obj: Any) -> Any:
    """Drop values whose key looks like a secret. Keys name env vars in our configs, never values,
    but a user override could still put a secret in; it must not reach W&B or results."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def secrets_in_config(cfg: Any, environ: dict | None = None) -> list[str]:
    """Where a config holds a secret: a secret-looking key with a value, or any value containing the
    value of a secret-looking environment variable (e.g. an override `x=${oc.env:OPENAI_API_KEY}`).
    Returns "path (why)" strings; never the secret itself."""
    environ = os.environ if environ is None else environ
    env_secrets = {name: value for name, value in environ.items()
                   if is_secret_key(name) and len(value) >= _MIN_SECRET_CHARS}
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if is_secret_key(key) and value not in (None, "", "???"):
                    found.append(f"{where} (a secret-looking key with a value)")
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
        elif isinstance(node, str):
            found.extend(f"{path} (holds the value of ${name})" for name, v in env_secrets.items() if v in node)

    walk(cfg, "")
    return found


# The bench run's metrics are plotted against their own axis (the order the stages logged them); training
# curves live in their own runs (spae.tracking.runs), against trainer/global_step.
EVAL_STEP = "eval/step"


def wandb_group(cfg: dict, run_id: str) -> str:
    """The W&B group of a bench run and of the models it trains: the sweep's logger.group, else the run id."""
    return (cfg.get("logger") or {}).get("group") or run_id


def init_wandb(cfg: dict, run_dir: Path, *, name: str, run_id: str, group: str, job_type: str, config: dict,
               reinit: str) -> Any:
    """A W&B run with the logger's project/entity/mode in the bench's group, written under run_dir (offline:
    run_dir/wandb/offline-run-*, uploaded later with `wandb sync`)."""
    opts = cfg.get("logger") or {}
    mode = opts.get("mode", "offline")
    if cfg.get("offline", True) and mode == "online":  # checked before the (slow) wandb import
        raise ConfigConflictError("logger=wandb (online) conflicts with offline=true; use "
                                  "logger=wandb_offline, or set offline=false to log online")
    import wandb

    run_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=opts.get("project", "spae"), entity=opts.get("entity"), group=group,
        job_type=job_type, name=name, id=run_id[-40:].replace("/", "-") + "-" + _attempt_suffix(run_dir),
        dir=str(run_dir), mode=mode, config={**config, **knob_columns(cfg)}, reinit=reinit,
        settings=wandb.Settings(silent=True, console="off"),
    )


class RunLogger:
    def __init__(self, kind: str, run_dir: Path, run_id: str, cfg: dict):
        self.kind = kind
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.cfg = redact(cfg)
        self._wandb_run = None
        self._eval_step = 0
        self.training_runs: list = []  # spae.tracking.runs.TrainingRun started under this bench run

    @classmethod
    def from_config(cls, cfg: dict, run_dir: Path, run_id: str) -> "RunLogger":
        kind = (cfg.get("logger") or {}).get("kind", "none")
        return cls(kind, run_dir, run_id, cfg)

    @property
    def group(self) -> str:
        return wandb_group(self.cfg, self.run_id)

    # context manager: start/finish the W&B run
    def __enter__(self) -> "RunLogger":
        if self.kind == "wandb":
            self._start_wandb()
        return self

    def __exit__(self, *exc: Any) -> None:
        for child in self.training_runs:  # a stage that failed mid-training leaves its run open
            child.finish(exit_code=1 if exc[0] is not None else 0)
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def _start_wandb(self) -> None:
        self._wandb_run = init_wandb(self.cfg, self.run_dir, name=self.run_id, run_id=self.run_id, group=self.group,
                                     job_type="eval", config=self.cfg, reinit="finish_previous")
        self._wandb_run.define_metric(EVAL_STEP)
        self._wandb_run.define_metric("*", step_metric=EVAL_STEP)

    def training_run(self, stage: str, method: str, key: str, cfg: dict) -> Any:
        """A separate W&B run for one trained model (spae.tracking.runs.TrainingRun), in this run's group."""
        from spae.tracking.runs import TrainingRun

        run = TrainingRun.start(self, stage, method, key, cfg)
        self.training_runs.append(run)
        return run

    def _log(self, payload: dict, step: int | None = None) -> None:
        self._eval_step += 1
        self._wandb_run.log({**payload, EVAL_STEP: self._eval_step}, step=step)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        flat = _flatten(metrics)
        self._append_jsonl({"step": step, **flat})
        if self._wandb_run is not None:
            self._log(flat, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self._wandb_run is not None:
            import wandb

            self._log({name: wandb.Table(columns=columns, data=rows)})

    def log_image(self, name: str, path: str | Path, caption: str | None = None) -> None:
        if self._wandb_run is not None:
            import wandb

            self._log({name: wandb.Image(str(path), caption=caption)})

    def log_results(self, results: dict) -> None:
        self.log_metrics({"results": results.get("metrics", {})})
        if self._wandb_run is not None:
            self._wandb_run.summary.update(_flatten({"results": results.get("metrics", {})}))

    def lightning_logger(self, save_dir: Path) -> Any:
        """A Lightning logger writing beside the stage's artefacts (False when logging is off). Into the bench run:
        the training stages use their own run's instead (spae.tracking.runs.TrainingRun.lightning_logger)."""
        from pytorch_lightning.loggers import CSVLogger, WandbLogger

        if self.kind == "wandb" and self._wandb_run is not None:
            return WandbLogger(experiment=self._wandb_run, save_dir=str(save_dir))
        if self.kind in ("csv", "wandb"):
            return CSVLogger(save_dir=str(save_dir), name="logs")
        return False

    def _append_jsonl(self, record: dict) -> None:
        if self.kind == "none":
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


def knob_columns(cfg: dict) -> dict:
    """{"ablation/<knob>": value} for the knobs a sweep preset names (logger.knobs), so a W&B project shows a
    sweep's runs grouped (logger.group) with exactly the varied knobs as config columns."""
    out = {}
    for path in (cfg.get("logger") or {}).get("knobs") or []:
        node: Any = cfg
        for part in str(path).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[f"ablation/{path}"] = json.dumps(node) if isinstance(node, (list, dict)) else node
    return out


def _attempt_suffix(run_dir: Path) -> str:
    """W&B run ids must be unique per attempt; reruns of the same config are new W&B runs."""
    count_file = Path(run_dir) / ".wandb_attempts"
    count = int(count_file.read_text()) + 1 if count_file.exists() else 1
    count_file.write_text(str(count))
    return f"{count}-{os.getpid()}"


def _flatten(obj: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in obj.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out
