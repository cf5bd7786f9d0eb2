"""The SLURM launcher config (submitit) composes with a sweep preset, documents and sets its knobs, and
builds Hydra's SlurmLauncher (nothing is submitted)."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, REPO

KNOBS = ("partition", "gpus_per_node", "tasks_per_node", "nodes", "timeout_min", "array_parallelism",
         "cpus_per_task", "mem_gb", "setup", "additional_parameters")


def launcher(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    return cfg.hydra.launcher, cfg


def test_slurm_launcher_composes_with_its_knobs():
    lc, cfg = launcher(["+sweep=quantizer", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                        "hydra.launcher.gpus_per_node=8", "hydra.launcher.timeout_min=600",
                        "hydra.launcher.array_parallelism=4", "trainer=ddp"])
    assert lc._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (lc.partition, lc.gpus_per_node, lc.timeout_min, lc.array_parallelism) == ("gpu", 8, 600, 4)
    assert lc.tasks_per_node == 8  # one task per GPU follows gpus_per_node
    assert cfg.trainer.strategy.startswith("ddp") and cfg.hydra.sweeper.params["method.quantizer"] == "vq,rq,saq"
    default, _ = launcher(["hydra/launcher=slurm"])
    assert (default.gpus_per_node, default.tasks_per_node, default.nodes) == (1, 1, 1)  # a cell per GPU


def test_every_knob_is_documented():
    text = (CONF_DIR / "hydra" / "launcher" / "slurm.yaml").read_text()
    own = yaml.safe_load(text)
    for knob in KNOBS:
        assert knob in own, f"slurm.yaml does not set {knob}"
        line = next(line for line in text.splitlines() if line.startswith(f"{knob}:"))
        assert "#" in line, f"slurm.yaml: {knob} has no comment saying what it is"
    doc = (REPO / "docs" / "scaling.md").read_text()
    for knob in ("partition", "gpus_per_node", "timeout_min", "array_parallelism", "wandb sync", "ddp_multinode"):
        assert knob in doc, f"docs/scaling.md does not document {knob}"


def test_launcher_instantiates_without_submitting(tmp_path):
    from hydra.utils import instantiate

    lc, _ = launcher(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    params = OmegaConf.to_container(lc, resolve=False)
    params.update(submitit_folder=str(tmp_path / "submitit"), name="cell")  # Hydra fills these at launch
    launcher_obj = instantiate(params)
    assert type(launcher_obj).__name__ == "SlurmLauncher"
    assert launcher_obj.params["partition"] == "gpu" and launcher_obj.params["tasks_per_node"] == 1


def test_cli_cfg_hydra_prints_the_launcher(tmp_path):
    env = {**os.environ, "SPAE_CACHE_DIR": str(tmp_path / "c"), "SPAE_RUNS_DIR": str(tmp_path / "r")}
    proc = subprocess.run([sys.executable, "-m", "experiments.run", "+sweep=full", "hydra/launcher=slurm",
                           "hydra.launcher.partition=batch", "--cfg", "hydra"], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hydra_cfg = yaml.safe_load(proc.stdout)["hydra"]
    assert hydra_cfg["launcher"]["partition"] == "batch"
    assert hydra_cfg["launcher"]["_target_"].endswith("SlurmLauncher")
    assert hydra_cfg["sweeper"]["params"]["sweep/cell"].startswith("baseline,")
