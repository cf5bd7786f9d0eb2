"""Config and checkpoint errors reached through the entry point (issue 8): pyramid settings, config names
used as folder names, and checkpoints from another configuration give a UserError that names the Hydra key
or the file and the fix, before anything is written where possible."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, compose

from experiments.run import as_user_error, execute
from spae.errors import CheckpointMismatchError, InvalidConfigError, UserError
from spae.io import PathEscapeError


def _execute_fails(tmp_path, *overrides: str) -> UserError:
    cfg = compose([f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}", "logger=none",
                   *overrides])
    with pytest.raises(UserError) as excinfo:
        execute(cfg)
    assert not (tmp_path / "cache").exists()  # refused before any stage ran or wrote
    return excinfo.value


# ------------------------------------------------------------------------------------------ pyramid
@pytest.mark.parametrize("overrides,fragments", [
    (["model.layers=[1,2.5,4]"], ["model.layers", "2.5", "positive integer"]),
    (["model.layers=[1,0,4]"], ["model.layers", "positive integer"]),
    (["model.layers=[1,-2]"], ["model.layers", "-2"]),
    (["model.layers=[1,2,16]"], ["model.layers", "exceeds model.latent_size=8", "[1, 2, 4, 8]"]),
    (["model.layers=[1,3]"], ["model.layers", "does not divide model.latent_size=8", "[1, 2, 4, 8]"]),
    (["model.layers=[4,2]"], ["model.layers", "non-decreasing"]),
    (["model.layers=[]"], ["model.layers is empty"]),
    (["model.latent_size=0"], ["model.latent_size must be a positive integer"]),
    (["model.latent_size=7.5"], ["model.latent_size", "7.5"]),
    (["method.semantic.thresholds=[1.5,0.9]"], ["method.semantic.thresholds", "[1.5]", "between 0 and 1"]),
    (["method=lqae", "model.latent_size=-8"], ["model.latent_size"]),
])
def test_pyramid_config_errors_name_the_hydra_keys_before_any_stage(tmp_path, overrides, fragments):
    err = _execute_fails(tmp_path, "+bench=smoke", *overrides)
    assert isinstance(err, InvalidConfigError)
    for fragment in fragments:
        assert fragment in str(err), (fragment, str(err))
    assert "layer_sides" not in str(err)  # the library's argument name is not what the user sets


def test_thresholds_of_a_compared_method_name_its_bench_key(tmp_path):
    err = _execute_fails(tmp_path, "+bench=mini_imagenet", "bench.methods.spae.semantic.thresholds=[0.9,-0.1]")
    assert "bench.methods.spae.semantic.thresholds" in str(err) and "[-0.1]" in str(err)


def test_pyramid_for_validates_instead_of_truncating():
    """spae.tokenizer.pyramid_for used int(s): a side of 2.5 silently became 2."""
    from spae.tokenizer import pyramid_for

    with pytest.raises(InvalidConfigError, match="model.layers.*2.5"):
        pyramid_for({"layers": [1, 2.5, 4], "latent_size": 4}, {})
    with pytest.raises(InvalidConfigError, match="model.latent_size"):
        pyramid_for({"layers": [1], "latent_size": 4.0}, {"single_layer": True})
    assert pyramid_for({"layers": [1, 2, 4], "latent_size": 4}, {}).layer_sides == [1, 2, 4]
    assert pyramid_for({"layers": [1, 2], "latent_size": 4}, {"single_layer": True}).layer_sides == [4]


def test_bad_pyramid_on_the_cli_is_one_clear_line_and_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.run", "+bench=smoke", "model.layers=[1,2.5,4]",
                           f"paths.cache_dir={tmp_path}", f"paths.runs_dir={tmp_path}", "logger=none"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "error: Every entry of model.layers" in proc.stderr


# ------------------------------------------------------------------------------------------ paths
@pytest.mark.parametrize("overrides,key", [
    (["+bench=smoke", "data.classification.name=../../outside"], "data.classification.name"),
    (["+bench=smoke", "data.pretrain.fashion_mnist.name=a/b"], "data.pretrain.fashion_mnist.name"),
    (["+bench=smoke", "bench.stages=[../../outside]"], "bench.stages[0]"),
    (["+bench=reconstruction", "bench.recon.roles=[../outside]"], "bench.recon.roles[0]"),
    (["+bench=mini_imagenet", "bench.compare=[{method: ../../outside}]"], "bench.compare[0].method"),
    (["+bench=mini_imagenet", "bench.prompt.name=../../outside"], "bench.prompt.name"),
    (["+bench=mini_imagenet", "+bench.methods={../x: {kind: tokenizer}}"], "bench.methods.../x (key)"),
    (["+bench=smoke", "llm.name=.."], "llm.name"),
])
def test_config_names_that_would_escape_the_folders_are_refused_before_writing(tmp_path, overrides, key):
    err = _execute_fails(tmp_path, *overrides)
    assert isinstance(err, PathEscapeError) and key in str(err), str(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere, inside or out


def test_few_shot_records_refuse_an_escaping_prompt_name(tmp_path):
    """The stage checks again where it builds the path (for callers that bypass the entry point)."""
    from experiments.stages.fewshot_eval import evaluate_methods
    from spae.fewshot.prompts import PromptTemplate
    from spae.llm.dummy import DummyBackend

    template = PromptTemplate.from_dict({**compose(["+bench=mini_imagenet"]).bench.prompt, "name": "../../x"})
    with pytest.raises(PathEscapeError, match="bench.prompt.name"):
        evaluate_methods(DummyBackend(), {"m": {}}, {"c": []}, template, "exact", {"m": tmp_path / "m"})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ checkpoints
def _tiny_module(**model_overrides):
    from spae.tokenizer import SPAETokenizer
    from tests.tokenizer_helpers import random_codebook, tiny_config

    config = tiny_config(semantic_loss=False)
    config["model"].update(model_overrides)
    codebook, words = random_codebook()
    return SPAETokenizer(config, codebook, words, with_perceptual=False)


def test_resuming_from_a_lightning_checkpoint_of_another_config_is_a_user_error(tmp_path):
    from spae.training import check_resume_checkpoint

    ours, theirs = _tiny_module(), _tiny_module(channels=[8, 8, 16])
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": theirs.state_dict(), "global_step": 4}, path)
    with pytest.raises(CheckpointMismatchError) as excinfo:
        check_resume_checkpoint(path, ours)
    message = str(excinfo.value)
    assert str(path) in message and "another model configuration" in message and "Delete" in message
    assert "force=[<stage>]" in message and "expected" in message
    torch.save({"state_dict": ours.state_dict(), "global_step": 4}, path)
    assert check_resume_checkpoint(path, ours)["global_step"] == 4  # its own checkpoint passes


def test_a_tokenizer_from_another_codebook_is_reported_as_a_user_error(tmp_path):
    from spae.codebook import Codebook
    from spae.tokenizer import load_tokenizer, save_tokenizer
    from tests.tokenizer_helpers import random_codebook

    save_tokenizer(_tiny_module(), tmp_path)
    embeddings, words = random_codebook(k=10)
    with pytest.raises(ValueError) as excinfo:
        load_tokenizer(tmp_path, Codebook(embeddings, words, torch.arange(10), "random"))
    user_error = as_user_error(excinfo.value)  # what `python -m experiments.run` prints (exit code 2)
    assert isinstance(user_error, CheckpointMismatchError) and "codebook of 64 words" in str(user_error)
    try:
        raise ValueError("a bug elsewhere")
    except ValueError as bug:
        assert as_user_error(bug) is None  # other ValueErrors keep their traceback
