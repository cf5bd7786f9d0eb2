"""Training through Lightning: manual optimisation of both optimisers, global_step accounting,
checkpoints loadable with weights_only=True, exact resume, saved weights reload for evaluation."""
from __future__ import annotations

import datasets
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from spae.codebook import Codebook
from spae.datamodule import PretrainDataModule, StreamSampler
from spae.tokenizer import SPAETokenizer, load_tokenizer, save_tokenizer
from tests.tokenizer_helpers import fake_relevance, random_codebook, tiny_config


def tiny_dataset(n: int = 24) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]
    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


def fit(tmp_path, steps: int, total: int, resume: bool = False, every: int = 2):
    """Train the tiny tokenizer for `steps` batches of a `total`-batch schedule (as the train stage does)."""
    pl.seed_everything(0)
    cb, words = random_codebook()
    module = SPAETokenizer(tiny_config(), cb, words, fake_relevance(len(words)))
    dm = PretrainDataModule([tiny_dataset()], 16, batch_size=4, seed=0, total_batches=total)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), save_last=True,
                                        every_n_train_steps=every * module.optimizer_steps_per_batch)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps * module.optimizer_steps_per_batch, max_epochs=-1,
                         callbacks=[ckpt], logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    return module, trainer


def test_manual_optimisation_steps_both_optimisers(tmp_path):
    module, trainer = fit(tmp_path, steps=4, total=4)
    assert module.automatic_optimization is False
    # Lightning counts every optimiser step: two per batch
    assert trainer.global_step == 8 and module.iteration == 4
    opt_g, opt_d = trainer.optimizers
    # the generator moved every batch; the discriminator only once the GAN started (start_step=2)
    assert opt_g.state[next(iter(module.encoder.parameters()))]["step"] == 4
    assert opt_d.state[next(iter(module.discriminator.parameters()))]["step"] == 2
    assert bool(module.lecam.initialised)
    # both schedulers were stepped once per batch
    sched_g, sched_d = trainer.lr_scheduler_configs[0].scheduler, trainer.lr_scheduler_configs[1].scheduler
    assert sched_g.last_epoch == 4 and sched_d.last_epoch == 4


def test_checkpoint_loads_with_weights_only(tmp_path):
    module, _ = fit(tmp_path, steps=2, total=2)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert not any(k.endswith("codebook") or k.startswith("perceptual.") for k in keys)
    assert any(k.startswith("encoder.") for k in keys)
    assert ckpt["hyper_parameters"]["config"]["method"]["name"] == "spae"


def test_resume_gives_the_same_final_weights(tmp_path):
    # 4 batches; the GAN starts at batch 2, so the resumed part trains both optimisers and LeCam
    straight, _ = fit(tmp_path / "straight", steps=4, total=4)
    fit(tmp_path / "resumed", steps=2, total=4)  # "interrupted" after 2 of 4 batches
    resumed, trainer = fit(tmp_path / "resumed", steps=4, total=4, resume=True)
    assert trainer.global_step == 8
    a, b = straight.trainable_state_dict(), resumed.trainable_state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_saved_tokenizer_reloads_identically(tmp_path):
    module, _ = fit(tmp_path, steps=2, total=2)
    save_tokenizer(module, tmp_path / "out")
    cb, words = random_codebook()
    codebook = Codebook(cb, words, torch.arange(len(words)), "random")
    loaded = load_tokenizer(tmp_path / "out", codebook)
    x = torch.rand(2, 3, 16, 16)
    module.eval()
    assert torch.equal(loaded.forward_eval(x), module.forward_eval(x))
    with pytest.raises(ValueError, match="codebook of 64 words"):
        load_tokenizer(tmp_path / "out", Codebook(cb[:10], words[:10], torch.arange(10), "random"))


def test_stream_sampler_resumes_mid_stream():
    full = list(StreamSampler(10, seed=3, start=0, length=25))
    assert sorted(full[:10]) == list(range(10)) and full[:10] != full[10:20]
    assert list(StreamSampler(10, seed=3, start=7, length=18)) == full[7:]


def test_a_tokenizer_saved_with_a_removed_option_still_loads_and_new_configs_refuse_it(tmp_path):
    """method.loss.prefix_order_weight was removed (it measured no gain); tokenizer.json files written before
    carry it. It shaped training only, so such a tokenizer loads as it was trained; a new config naming it
    fails with the valid keys."""
    import json

    from spae.config import InvalidConfigError
    from spae.tokenizer import CONFIG_FILE

    torch.manual_seed(0)
    cb, words = random_codebook()
    module = SPAETokenizer(tiny_config(), cb, words).eval()
    save_tokenizer(module, tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["config"]["method"]["loss"]["prefix_order_weight"] = 0.0  # as written before the option was removed
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = load_tokenizer(tmp_path, Codebook(cb, words, torch.arange(len(words)), "random"))
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded.forward_eval(x), module.forward_eval(x))
    with pytest.raises(InvalidConfigError, match="prefix_order_weight.*valid keys"):
        SPAETokenizer(meta["config"], cb, words)
