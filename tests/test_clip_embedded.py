"""The embedded CLIP: towers split exactly into cached prefix + trained suffix, a few training steps run,
resume from a checkpoint, and the saved weights load (safetensors + JSON) into a working scorer."""
from __future__ import annotations

import json

import pytest
import torch

from spae.clip.captions import (CLASS_KNOWLEDGE, HELD_OUT, SHAPE_KNOWLEDGE, COLOURS, caption_pool, check_no_held_out,
                                shape_pool, words_in)
from spae.clip.embedded import (CONFIG_FILE, WEIGHTS_FILE, EmbeddedClipConfig, build_embedded_clip, load_embedded,
                                save_embedded, text_prefix_states, text_suffix, tokenizer_for)
from spae.clip.scorer import RelevanceScorer
from spae.clip.train_embedded import TrainConfig, TrainingSet, train_embedded_clip

CFG = EmbeddedClipConfig(embed_dim=16, image_size=32, context_length=16, unlocked_image_blocks=1,
                         unlocked_text_layers=1)


@pytest.fixture(scope="module")
def model():
    return build_embedded_clip(CFG, pretrained=False).eval()  # structure only: weights do not matter here


def test_prefix_suffix_split_is_exact(model):
    tokens = tokenizer_for(CFG)(["a photo of a sandal.", "trousers", "a red circle"])
    with torch.no_grad():
        full = model.text(tokens)
        states = text_prefix_states(model, tokens, CFG.unlocked_text_layers)
        split = text_suffix(model, states, (tokens != 0).long(), CFG.unlocked_text_layers)
        assert torch.allclose(full, split, atol=1e-5)
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(model.visual(x), model.visual.forward_suffix(model.visual.forward_prefix(x)), atol=1e-5)


def test_only_the_unlocked_parts_train(model):
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "text.proj.weight" in trained and "visual.proj.weight" in trained and "logit_scale" in trained
    assert any(n.startswith("text.transformer.encoder.layer.5.") for n in trained)
    assert not any(n.startswith("text.transformer.encoder.layer.4.") for n in trained)
    assert not any(n.startswith("visual.net._blocks.14.") for n in trained)
    assert any(n.startswith("visual.net._blocks.15.") for n in trained)


def _tiny_sets():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 28, 28)
    labels = ["trouser", "bag", "coat", "trouser", "bag", "coat"]

    def batches(batch_size):
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size]

    pools = [caption_pool(name, f"a photo of a {name}") for name in labels]
    return [TrainingSet("tiny", batches, pools, labels)]


def test_a_few_training_steps_save_and_load(tmp_path):
    sets = _tiny_sets()
    train = TrainConfig(steps=3, batch_size=3, checkpoint_every=2, warmup_steps=1)
    model, stats = train_embedded_clip(sets, CFG, train, tmp_path)
    assert stats["final_step"] == 3 and stats["images"] == 6 and stats["concepts"] == 3 and not stats["resumed"]
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    save_embedded(model, CFG, tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert meta["config"]["embed_dim"] == 16 and (tmp_path / WEIGHTS_FILE).is_file()
    handle = load_embedded(tmp_path)
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_image(handle.preprocess(images)), dim=-1)
    assert torch.allclose(handle.encode_images(images), expected, atol=1e-5)
    scorer = RelevanceScorer(handle, ["pants", "purse", "jacket"], ["a photo of {word}."], progress=False)
    assert scorer.normalized_scores(images).shape == (2, 3)


@pytest.mark.slow
def test_an_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    sets = _tiny_sets()
    train_embedded_clip(sets, CFG, TrainConfig(steps=2, batch_size=3, checkpoint_every=2), tmp_path)
    # a rerun with more steps (as after an interruption) continues from step 2 instead of starting over
    _, again = train_embedded_clip(sets, CFG, TrainConfig(steps=4, batch_size=3, checkpoint_every=2), tmp_path)
    assert again["resumed"] and again["resumed_at_step"] == 2 and again["final_step"] == 4


def test_missing_stage_output_has_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the `clip` stage"):
        load_embedded(tmp_path)


def test_held_out_words_never_appear_in_caption_pools():
    pools = [c for name in CLASS_KNOWLEDGE for c in caption_pool(name, f"a photo of a {name}")]
    pools += [c for shape in SHAPE_KNOWLEDGE for colour in (None, *COLOURS) for c in shape_pool(shape, colour)]
    check_no_held_out(pools)  # raises on a leak
    assert set(HELD_OUT) == set(CLASS_KNOWLEDGE) | set(SHAPE_KNOWLEDGE) | set(COLOURS)
    with pytest.raises(ValueError, match="held-out"):
        check_no_held_out(["a pair of jeans"])


def test_caption_pools_are_enriched_but_keep_the_dataset_caption():
    pool = caption_pool("pullover", "a photo of a pullover")
    assert pool[0] == "a photo of a pullover" and len(pool) > 20 and len(set(pool)) == len(pool)
    assert words_in(pool) - words_in(["a photo of a pullover"])  # more words than the class name
    assert caption_pool("pullover", "a photo of a pullover", enrich=False) == ["a photo of a pullover"]
    easy = caption_pool("", "a red circle")
    assert "a red circle" in easy and any("curved" in c for c in easy)
    assert caption_pool("zebra", "") == ["a photo of zebra."]


def _pairs(concepts, pools, set_ids):
    import numpy as np

    from spae.clip.train_embedded import CachedPairs

    return CachedPairs(image_prefix=torch.zeros(len(pools), 1), caption_states=torch.zeros(1), caption_mask=torch.zeros(1),
                       pools=[np.array(p) for p in pools], concepts=np.array(concepts), captions=[],
                       set_ids=np.array(set_ids))


def test_free_text_batches_never_repeat_a_caption_or_a_concept():
    """Clip-art style data: thousands of concepts, some images sharing one caption (the same title)."""
    from spae.clip.train_embedded import StepBatches

    n = 200
    concepts = [i // 4 for i in range(n)]  # 4 images per title
    pools = [[i // 4] for i in range(n)]  # one caption per title
    batches = StepBatches(_pairs(concepts, pools, [0] * n), steps=20, batch_size=16, seed=0)
    for step in range(len(batches)):
        images, captions = batches[step]
        assert len(images) == 16
        assert len(set(captions.tolist())) == 16 and len({concepts[i] for i in images.tolist()}) == 16


def test_few_concepts_repeat_but_captions_never_do_and_sets_share_by_mix():
    import numpy as np

    from spae.clip.train_embedded import StepBatches, set_shares

    # set 0: a 3-class labelled set with rich pools (captions 0..29); set 1: 300 free-text images
    concepts = [i % 3 for i in range(30)] + list(range(3, 303))
    pools = [[(i % 3) * 10 + k for k in range(10)] for i in range(30)] + [[100 + i] for i in range(300)]
    pairs = _pairs(concepts, pools, [0] * 30 + [1] * 300)
    batches = StepBatches(pairs, steps=50, batch_size=8, seed=1, mix="balanced")
    from_labelled = []
    for step in range(len(batches)):
        images, captions = batches[step]
        assert len(set(captions.tolist())) == len(captions) == 8
        from_labelled.append(int((images < 30).sum()))
    assert max(from_labelled) <= 3  # at most one image per class while other concepts can fill the batch
    assert np.allclose(set_shares([100, 400], "sqrt"), [1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="clip.train.mix"):
        set_shares([1, 2], "square")


def test_seen_images_are_never_captioned_with_a_held_out_class_name():
    from spae.clip.train_embedded import held_out_name_words, image_pools

    forbidden = held_out_name_words(["trouser", "sneaker", "bag"])
    assert {"trouser", "trousers", "sneakers"} <= forbidden
    pools, dropped = image_pools(["shirt", "sandal", ""], [["a photo of a shirt"], ["a photo of a sandal"],
                                                            ["A pair of trousers.", "trousers"]],
                                 ["templated", "templated", "real"], enrich=True, forbidden=forbidden)
    assert dropped > 0  # CLASS_KNOWLEDGE's shirt text mentions trousers; sneaker-like words for sandals
    for pool in pools[:2]:
        assert pool and not words_in(pool) & forbidden
    assert pools[2] == ["A pair of trousers.", "trousers"]  # free text of the broad world keeps its words
