"""A quiet console: progress bars on a terminal, none in non-interactive logs; libraries at warning level.

One place decides (experiments/run.py calls `configure_console` once per run): the mode is the environment's
SPAE_PROGRESS when set, else the config's `progress`, else auto:
- auto: bars only when stderr is a terminal (a log file or CI output gets no carriage-return bars);
- on / off: always / never.
Every bar follows it: the datasets, transformers and huggingface_hub bars (their own switches), Lightning's
TQDMProgressBar (spae.training.build_trainer) and this project's tqdm loops (`progress_enabled()`).
Library chatter that says nothing about this run is silenced here too (Lightning's tips and device lines at
INFO, a frozen LLM's "modules in eval mode" warning, libraries' deprecation notices); warnings of this code stay.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

from spae.errors import InvalidConfigError

PROGRESS_ENV = "SPAE_PROGRESS"
MODES = ("auto", "on", "off")

_mode = "auto"

# Lightning's INFO lines at Trainer start: "GPU available: ...", "💡 Tip: ... litlogger/litmodels ..."
LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                          "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# Warnings that are expected by design here (the Frozen baseline keeps its LLM frozen in eval mode; the embedded
# CPU preset runs the data loader in the main process on purpose)
EXPECTED_WARNINGS = (r"Found \d+ module\(s\) in eval mode", r".*does not have many workers")
# libraries whose deprecation notices are for their maintainers, not for a user of this project
NOISY_LIBRARIES = r"(torch|torchvision|torchmetrics|pytorch_lightning|lightning_fabric|lightning|transformers|datasets|" \
                  r"huggingface_hub|open_clip|timm|wandb|hydra|omegaconf)(\.|$)"


def progress_mode(configured: str | None = None) -> str:
    """SPAE_PROGRESS when set, else the configured mode, else auto; anything else is an error naming the modes."""
    mode = os.environ.get(PROGRESS_ENV) or configured or "auto"
    mode = str(mode).strip().lower()
    if mode in ("true", "1", "yes"):  # YAML booleans and shell habits
        mode = "on"
    elif mode in ("false", "0", "no"):
        mode = "off"
    if mode not in MODES:
        source = PROGRESS_ENV if os.environ.get(PROGRESS_ENV) else "progress"
        raise InvalidConfigError(f"{source}={mode!r}: choose one of {', '.join(MODES)} (auto = progress bars only "
                                 "when stderr is a terminal)")
    return mode


def progress_enabled() -> bool:
    """Whether progress bars are shown now (the mode `configure_console` set; auto before it is called)."""
    if _mode == "auto":
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return _mode == "on"


def configure_console(progress: str | None = None) -> bool:
    """Apply the progress mode to every library's bars and quiet their chatter; returns whether bars show."""
    global _mode
    _mode = progress_mode(progress)
    enabled = progress_enabled()
    _library_bars(enabled)
    for name in LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=NOISY_LIBRARIES)
    return enabled


# read by these libraries when they are imported (later, for most runs); the switches below act once they are
BAR_ENV_VARS = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
VERBOSITY_ENV_VARS = ("DATASETS_VERBOSITY", "TRANSFORMERS_VERBOSITY")


def _library_bars(enabled: bool) -> None:
    """datasets ("Saving the dataset", "Generating ... split"), huggingface_hub (downloads) and transformers
    (their bars follow the hub's), without importing any of them just for this."""
    for var in BAR_ENV_VARS:
        if not enabled:
            os.environ[var] = "1"
        elif os.environ.get(var) == "1":  # a value "0" would make the libraries refuse to disable them later
            del os.environ[var]
    for var in VERBOSITY_ENV_VARS:
        os.environ.setdefault(var, "warning")
    if "datasets" in sys.modules:
        import datasets

        (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
        datasets.logging.set_verbosity_warning()
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils as hub_utils

        (hub_utils.enable_progress_bars if enabled else hub_utils.disable_progress_bars)()
    if "transformers" in sys.modules:
        import transformers

        switch = transformers.utils.logging
        (switch.enable_progress_bar if enabled else switch.disable_progress_bar)()
        transformers.logging.set_verbosity_warning()
