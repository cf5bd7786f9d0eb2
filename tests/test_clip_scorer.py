"""The relevance scorer: shapes, min-max normalisation, prompt ensembling, and the on-disk text cache."""
from __future__ import annotations

import open_clip
import pytest
import torch

from spae.clip.handle import ClipHandle
from spae.clip.scorer import RelevanceScorer, minmax

TINY = {"embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
WORDS = ["cat", "dog", "shoe", "boot", "circle", "red", "bag"]


class CountingModel(torch.nn.Module):
    """A tiny random open_clip CLIP that counts encode_text calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = open_clip.CLIP(**TINY)
        self.text_calls = 0

    def encode_image(self, images, normalize=False):
        return self.inner.encode_image(images, normalize=normalize)

    def encode_text(self, tokens, normalize=False):
        self.text_calls += 1
        return self.inner.encode_text(tokens, normalize=normalize)


@pytest.fixture
def clip():
    return ClipHandle(model=CountingModel().eval(), tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=16),
                      image_size=32, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28), identity="tiny-random")


def test_shapes_and_minmax_normalisation(clip, tmp_path):
    scorer = RelevanceScorer(clip, WORDS, ["a photo of {word}."], cache_dir=tmp_path, progress=False)
    images = torch.rand(3, 3, 40, 56)  # not square, not the model's size: preprocessing handles it
    assert scorer.encode_images(images).shape == (3, 24)
    scores = scorer.scores(images)
    assert scores.shape == (3, len(WORDS)) and scores.abs().max() <= 1 + 1e-5  # cosines
    norm = scorer.normalized_scores(images)
    assert norm.min() >= 0 and norm.max() <= 1
    assert torch.allclose(norm.min(dim=1).values, torch.zeros(3)) and torch.allclose(norm.max(dim=1).values, torch.ones(3))
    assert torch.equal(norm.argmax(1), scores.argmax(1))
    top = scorer.top_words(images, 3)
    assert [row[0] for row in top] == [WORDS[i] for i in scores.argmax(1).tolist()]
    assert all(len(row) == 3 for row in top)
    assert scorer.encode_images(torch.rand(2, 1, 28, 28)).shape == (2, 24)  # grayscale input


def test_minmax_is_per_row():
    out = minmax(torch.tensor([[1.0, 2.0, 3.0], [-5.0, 5.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.5, 1.0], [0.0, 1.0, 0.5]]))


def test_text_embeddings_are_cached_on_disk_and_reused(clip, tmp_path):
    first = RelevanceScorer(clip, WORDS, ["a photo of {word}."], cache_dir=tmp_path, batch_size=3, progress=False)
    emb = first.text_embeddings
    calls = clip.model.text_calls
    assert calls == 3 and first.text_cache_hit is False  # 7 words in batches of 3
    assert first.cache_path.is_file()
    again = RelevanceScorer(clip, WORDS, ["a photo of {word}."], cache_dir=tmp_path, progress=False)
    assert torch.equal(again.text_embeddings, emb)
    assert clip.model.text_calls == calls and again.text_cache_hit is True  # nothing recomputed
    # another key (words, templates or CLIP) is computed afresh
    other = RelevanceScorer(clip, WORDS[:-1], ["a photo of {word}."], cache_dir=tmp_path, progress=False)
    other.text_embeddings
    assert clip.model.text_calls > calls and other.cache_path != first.cache_path


def test_templates_are_averaged(clip, tmp_path):
    templates = ["a photo of {word}.", "a drawing of a {word}."]
    both = RelevanceScorer(clip, WORDS, templates, progress=False).text_embeddings
    singles = [RelevanceScorer(clip, WORDS, [t], progress=False).text_embeddings for t in templates]
    expected = torch.nn.functional.normalize(singles[0] + singles[1], dim=-1)
    assert torch.allclose(both, expected, atol=1e-6)
    assert torch.allclose(both.norm(dim=-1), torch.ones(len(WORDS)), atol=1e-5)


def test_bad_inputs(clip):
    with pytest.raises(ValueError, match=r"\{word\}"):
        RelevanceScorer(clip, WORDS, ["a photo of a thing."])
    with pytest.raises(ValueError, match="empty"):
        RelevanceScorer(clip, [], ["a photo of {word}."])
    scorer = RelevanceScorer(clip, WORDS, ["{word}"], progress=False)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        scorer.scores(torch.rand(3, 32, 32))
