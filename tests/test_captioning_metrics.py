"""Caption metrics (spae.tasks.text_metrics): library values checked on tiny corpora computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from spae.tasks.text_metrics import bleu4, caption_scores, cider_d, clip_cosines, normalize_caption, rouge_l


def test_normalisation_is_shared_by_predictions_and_references():
    assert normalize_caption("A Red, CIRCLE!  ") == "a red circle"
    assert normalize_caption("it's blue.") == "it's blue"


def test_bleu4_hand_value():
    # p1..p4 = 4/5, 3/4, 2/3, 1/2; same length -> no brevity penalty
    assert bleu4(["a b c d e"], [["a b c d f"]]) == pytest.approx((0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25, abs=1e-4)
    assert bleu4(["The cat is on the mat."], [["the cat is on the mat", "a cat"]]) == pytest.approx(1.0)
    assert bleu4(["x y z w"], [["a b c d"]]) == 0.0


def test_rouge_l_hand_value_and_best_reference():
    # LCS "a b d e" = 4 of 5 words each side
    assert rouge_l(["a b c d e"], [["a b x d e"]]) == pytest.approx(0.8, abs=1e-4)
    assert rouge_l(["a b c d e"], [["q r s", "a b c d e"]]) == pytest.approx(1.0)


def test_cider_d_hand_values():
    # 2 images: "a" occurs in both reference sets (idf 0), "cat"/"dog" and the bigrams in one (idf log 2).
    # Identical captions: cosine 1 for 1- and 2-grams, no 3-/4-grams (0) -> mean 0.5, x10 = 5.
    score, per_item = cider_d(["a cat", "a dog"], [["a cat"], ["a dog"]])
    assert score == pytest.approx(5.0) and per_item == pytest.approx([5.0, 5.0])
    # The swapped captions share only the zero-idf "a"
    score, _ = cider_d(["a dog", "a cat"], [["a cat"], ["a dog"]])
    assert score == pytest.approx(0.0)
    # One extra word: 1- and 2-gram cosines 1/sqrt(2) (the extra n-gram has idf log 2 too), no 3-grams in the
    # reference, length penalty exp(-1^2 / (2 * 6^2)) -> 10 * (2 / sqrt(2)) / 4 * exp(-1/72) for that item
    longer, per_item = cider_d(["a cat sits", "a dog"], [["a cat"], ["a dog"]])
    first = 10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert per_item == pytest.approx([first, 5.0]) and longer == pytest.approx((first + 5.0) / 2)


def test_caption_scores_and_input_errors():
    scores = caption_scores(["a red circle", ""], [["a red circle"], ["a blue square"]])
    assert scores["items"] == 2 and scores["empty_answers"] == 1
    assert 0 < scores["rouge_l"] < 1 and math.isfinite(scores["cider_d"])
    with pytest.raises(ValueError, match="reference"):
        bleu4(["a"], [[]])
    with pytest.raises(ValueError, match="predictions"):
        rouge_l(["a", "b"], [["a"]])


class _TextIsColour:
    """A 'CLIP' whose image embedding is the mean RGB and whose text embedding names a colour."""
    image_size = 4
    COLOURS = {"red": [1.0, 0, 0], "green": [0, 1.0, 0], "blue": [0, 0, 1.0]}

    def encode_images(self, images):
        return torch.nn.functional.normalize(images.mean(dim=(2, 3)), dim=-1)

    def encode_texts(self, texts):
        rows = [next((v for k, v in self.COLOURS.items() if k in t), [1.0, 1.0, 1.0]) for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def test_clip_cosines_pair_each_image_with_its_text():
    images = torch.zeros(3, 3, 4, 4)
    images[0, 0], images[1, 1], images[2, 2] = 1, 1, 1
    cos = clip_cosines(_TextIsColour(), images, ["a red box", "green", "a red thing"], batch_size=2)
    assert cos == pytest.approx([1.0, 1.0, 0.0])
    with pytest.raises(ValueError):
        clip_cosines(_TextIsColour(), images, ["a"])
