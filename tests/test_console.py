"""A quiet console (issue 18, item 7): progress bars on a terminal, none in non-interactive logs; SPAE_PROGRESS
or the config's `progress` overrides."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spae import console
from spae.errors import InvalidConfigError

REPO = Path(__file__).resolve().parent.parent
BARS = ("Saving the dataset", "Generating", "%|")


@pytest.fixture
def restore_console(monkeypatch):
    """configure_console changes process state: put the mode and the libraries' variables back afterwards."""
    monkeypatch.setattr(console, "_mode", console._mode)
    for var in (console.PROGRESS_ENV, *console.BAR_ENV_VARS):
        monkeypatch.delenv(var, raising=False)
    yield
    import datasets

    datasets.enable_progress_bars()


def _smoke(tmp_path: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    from _data_fixtures import tiny_fashion_mnist

    fm = tiny_fashion_mnist(tmp_path / "fm")
    # configure_console (run by every in-process execute() of other tests) sets the libraries' bar switches in
    # os.environ: the subprocess starts from an environment without them, as a fresh shell would
    dropped = {console.PROGRESS_ENV, *console.BAR_ENV_VARS}
    environ = {k: v for k, v in os.environ.items() if k not in dropped} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "experiments.run", "+bench=smoke", "~data.pretrain.easy_vqa", "~data.vqa",
         "~data.pretrain.openclipart", "~data.pretrain.tuxpaint",
         "~data.generation", f"data.pretrain.fashion_mnist.path={fm}", f"data.classification.path={fm}",
         f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}", "logger=none", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=environ)


def test_a_run_logged_to_a_file_prints_no_progress_bars(tmp_path):
    out = _smoke(tmp_path)  # stderr is a pipe, as in a log file or CI
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout + out.stderr
    assert not [bar for bar in BARS if bar in printed], printed[-3000:]
    assert out.stdout.strip().splitlines()[-1].endswith("results.json")


def test_progress_on_shows_the_bars_in_a_log_too(tmp_path):
    """The override works (and the check above could fail): the same run with bars forced on."""
    out = _smoke(tmp_path, env={console.PROGRESS_ENV: "on"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Saving the dataset" in out.stderr and "%|" in out.stderr
    config_on = _smoke(tmp_path / "again", "progress=on")
    assert "Saving the dataset" in config_on.stderr


def test_the_environment_overrides_the_config_and_bad_modes_name_the_valid_ones(monkeypatch, restore_console):
    assert console.progress_mode("off") == "off" and console.progress_mode(None) == "auto"
    monkeypatch.setenv(console.PROGRESS_ENV, "on")
    assert console.progress_mode("off") == "on"
    monkeypatch.setenv(console.PROGRESS_ENV, "loud")
    with pytest.raises(InvalidConfigError, match=r"SPAE_PROGRESS='loud'.*auto, on, off"):
        console.progress_mode("auto")


def test_lightning_progress_bar_follows_the_console_and_its_tips_are_gone(restore_console, tmp_path, caplog):
    import logging

    from pytorch_lightning.callbacks import TQDMProgressBar

    from spae.training import build_trainer

    def trainer_bar(mode: str):
        console.configure_console(mode)
        trainer = build_trainer({"progress_bar": True}, tmp_path, False, max_steps=1, max_time_s=None,
                                checkpoint_every=1)
        return trainer.progress_bar_callback

    with caplog.at_level(logging.INFO):
        assert trainer_bar("off") is None
        assert isinstance(trainer_bar("on"), TQDMProgressBar)
    chatter = [r.getMessage() for r in caplog.records if "available:" in r.getMessage() or "Tip" in r.getMessage()]
    assert not chatter  # "GPU available: False, used: False", "Tip: ... litlogger ..."
    assert console.configure_console("auto") == sys.stderr.isatty()  # auto: bars only on a terminal
