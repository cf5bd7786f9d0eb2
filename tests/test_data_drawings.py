"""Open Clip Art and Tux Paint adapters on tiny trees in the Debian packages' formats."""
from __future__ import annotations

import numpy as np
import pytest
from _data_fixtures import spec, tiny_openclipart, tiny_tuxpaint

from spae.data import load_split
from spae.data.drawings import in_eval_split
from spae.data.openclipart import file_name_phrase
from spae.data.tuxpaint import english_description


def clipart_spec(root, **kw):
    return spec(adapter="openclipart", png_path=str(root / "png"), svg_path=str(root / "svg"), image_size=16, **kw)


def both_splits(s):
    return load_split(s, "train"), load_split(s, "eval")


def test_openclipart_captions_keep_what_is_drawn_and_drop_authors_noise_and_boilerplate(tmp_path):
    root = tiny_openclipart(tmp_path / "oca")
    train = load_split(clipart_spec(root, eval_fraction=0.0), "train")
    captions = list(train["caption"])
    apple = next(c for c in captions if "Apple" in c)
    assert "fruit" in apple and "food" in apple and "shiny red apple" in apple.lower()
    kettle = next(c for c in captions if "kettle" in c)
    assert "Lemon" not in kettle and "theme" not in kettle  # boilerplate title gone, file name names it
    horse = next(c for c in captions if "horse" in c)  # Italian title, author-suffixed file name: the folder names it
    text = " ".join(captions).lower()
    for noise in ("dan", "gerhards", "hevia", "architetto", "francesco", "unsorted", "hash", "magick", "icons",
                  "inkscape", "open clip art", "cavallo"):
        assert noise not in text.split() and noise not in text.replace(";", " ").replace(",", " ").split(), noise
    assert "Open Clip Art" not in text and horse
    assert len(train) == 19  # the drawing with no English text left is skipped, and said so
    assert "no_english_caption': 1" in train.info.description
    assert all(r == [] for r in train["questions"]) and set(train["label"]) == {-1}


def test_openclipart_pixels_are_composited_onto_white_squares(tmp_path):
    root = tiny_openclipart(tmp_path / "oca")
    train = load_split(clipart_spec(root, eval_fraction=0.0), "train")
    image = train[0]["image"]
    assert image.size == (16, 16) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert (pixels[0, 0] == 255).all() and (pixels[-1, -1] == 255).all()  # transparent and padding -> white
    assert (pixels.reshape(-1, 3).min(0) < 200).any()  # the drawing itself is there


def test_drawing_split_is_disjoint_deterministic_and_covers_everything(tmp_path):
    root = tiny_openclipart(tmp_path / "oca")
    s = clipart_spec(root, eval_fraction=0.3)
    train, test = both_splits(s)
    again = load_split(s, "eval")
    assert len(train) + len(test) == 19 and len(test) > 0
    unique = lambda ds: {c for c in ds["caption"] if not c.startswith("star")}  # noqa: E731 (stars share a title)
    assert unique(train).isdisjoint(unique(test))
    assert [np.asarray(i).tobytes() for i in test["image"]] == [np.asarray(i).tobytes() for i in again["image"]]
    assert in_eval_split("a/b", 0.5) == in_eval_split("a/b", 0.5)
    with pytest.raises(ValueError, match="eval_fraction"):
        load_split(clipart_spec(root, eval_fraction=1.5), "train")


def test_file_name_loses_its_truncated_author_suffix_and_number():
    assert file_name_phrase("double_chocolate_muffin_dan_ge_01", {"dan", "gerhards"}) == "double chocolate muffin"
    assert file_name_phrase("home1", set()) == "home"


def test_missing_packages_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y openclipart-png openclipart-svg"):
        load_split(clipart_spec(tmp_path / "nothing"), "train")
    with pytest.raises(FileNotFoundError, match="--no-install-recommends tuxpaint-stamps-default"):
        load_split(spec(adapter="tuxpaint", path=str(tmp_path / "nothing")), "train")


def test_tuxpaint_uses_the_english_first_line_and_skips_stamps_without_one(tmp_path):
    root = tiny_tuxpaint(tmp_path / "stamps")
    train, test = both_splits(spec(adapter="tuxpaint", path=str(root), image_size=16, eval_fraction=0.25))
    captions = set(train["caption"]) | set(test["caption"])
    assert len(train) + len(test) == 14 and len(test) > 0
    assert "A red handbag." in captions and "A frog." in captions
    assert not any("=" in c or "Geist" in c or "bus" in c for c in captions)
    notes = train.info.description + test.info.description
    assert "no_png" in notes and "no_description" in notes
    assert (np.asarray(train[0]["image"])[0, 0] == 255).all()


def test_english_description_of_translation_lines():
    assert english_description("A cat.\nde.utf8=Eine Katze.") == "A cat."
    assert english_description("de.utf8=Eine Katze.\nen.utf8=A cat.") == "A cat."
    assert english_description("ca@valencia.utf8=Un gat.\n") == ""
    assert english_description("\n\n") == ""


def test_a_drawing_shipped_twice_lands_in_one_split(tmp_path):
    import shutil

    root = tiny_openclipart(tmp_path / "oca")
    for kind, ext in (("png", "png"), ("svg", "svg")):
        (root / kind / "food" / "copy").mkdir(parents=True)
        shutil.copy(root / kind / "food/fruit/red_apple_dan_gerhard_01.{}".format(ext),
                    root / kind / "food/copy/red_apple_dan_gerhard_01.{}".format(ext))
    for fraction in (0.2, 0.4, 0.6):
        train, test = both_splits(clipart_spec(root, eval_fraction=fraction))
        apples = [sum("Apple" in c for c in ds["caption"]) for ds in (train, test)]
        assert sorted(apples) == [0, 2]
