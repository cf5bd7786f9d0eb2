"""Real-CLIP loading through open_clip, offline: a tiny architecture with random weights in a local file."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

from spae.clip import load_clip
from spae.clip.open_clip_loader import ClipConfigError, ClipWeightsUnavailable, save_open_clip_checkpoint

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    """Registers spae-tiny (GELU) and spae-tiny-quickgelu with open_clip; returns the GELU name."""
    folder = tmp_path_factory.mktemp("open_clip_cfg")
    (folder / "spae-tiny.json").write_text(json.dumps(TINY))
    (folder / "spae-tiny-quickgelu.json").write_text(json.dumps({**TINY, "quick_gelu": True}))
    open_clip.add_model_config(folder)
    return "spae-tiny"


def _checkpoint(arch, path, quick_gelu, preprocess=None):
    torch.manual_seed(0)
    model = open_clip.create_model(arch).eval()
    save_open_clip_checkpoint(model, path, quick_gelu=quick_gelu, preprocess_cfg=preprocess)
    return model


def test_local_file_loads_the_same_weights(tiny_arch, tmp_path):
    path = tmp_path / "tiny.safetensors"
    original = _checkpoint(tiny_arch, path, quick_gelu=False)
    handle = load_clip({"kind": "open_clip", "arch": tiny_arch, "pretrained": str(path)}, offline=True)
    images = torch.rand(2, 3, 32, 32)
    assert handle.image_size == 32
    expected = original.encode_image(handle.preprocess(images), normalize=True)
    assert torch.allclose(handle.encode_images(images), expected, atol=1e-6)
    assert handle.identity.startswith(f"open_clip:{tiny_arch}:file-")
    texts = handle.encode_texts(["a photo of a cat.", "a dog"])
    assert texts.shape == (2, 32) and torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_preprocessing_travels_with_the_file(tiny_arch, tmp_path):
    path = tmp_path / "tiny.safetensors"
    _checkpoint(tiny_arch, path, quick_gelu=False, preprocess={"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]})
    handle = load_clip({"kind": "open_clip", "arch": tiny_arch, "pretrained": str(path)}, offline=True)
    assert handle.mean == pytest.approx((0.1, 0.2, 0.3)) and handle.std == pytest.approx((0.5, 0.5, 0.5))


def test_quickgelu_weights_into_gelu_arch_are_refused(tiny_arch, tmp_path):
    path = tmp_path / "quick.safetensors"
    _checkpoint(f"{tiny_arch}-quickgelu", path, quick_gelu=True)
    with pytest.raises(ClipConfigError, match="QuickGELU mismatch.*spae-tiny-quickgelu"):
        load_clip({"kind": "open_clip", "arch": tiny_arch, "pretrained": str(path)}, offline=True)
    # the matching architecture loads
    load_clip({"kind": "open_clip", "arch": f"{tiny_arch}-quickgelu", "pretrained": str(path)}, offline=True)


def test_declared_activation_is_checked_for_files_without_metadata(tiny_arch, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(open_clip.create_model(tiny_arch).state_dict(), path)
    spec = {"kind": "open_clip", "arch": tiny_arch, "pretrained": str(path), "quick_gelu": True}
    with pytest.raises(ClipConfigError, match="QuickGELU"):
        load_clip(spec, offline=True)
    load_clip({**spec, "quick_gelu": False}, offline=True)


def test_tag_with_wrong_activation_is_refused_before_any_download(tmp_path):
    # OpenAI's weights were trained with QuickGELU; ViT-B-32 (plain GELU) would give wrong scores.
    with pytest.raises(ClipConfigError, match="ViT-B-32-quickgelu"):
        load_clip({"kind": "open_clip", "arch": "ViT-B-32", "pretrained": "openai"}, cache_dir=tmp_path,
                  offline=True)


def test_offline_tag_without_cached_file_says_how_to_fix(tmp_path):
    with pytest.raises(ClipWeightsUnavailable, match=r"clip\.pretrained=/path/to/file.*clip=embedded"):
        load_clip({"kind": "open_clip", "arch": "ViT-B-32-quickgelu", "pretrained": "openai"},
                  cache_dir=tmp_path, offline=True)


def test_bad_specs_have_clear_errors(tiny_arch, tmp_path):
    with pytest.raises(ClipConfigError, match="unknown open_clip architecture"):
        load_clip({"kind": "open_clip", "arch": "no-such-arch", "pretrained": "x"}, offline=True)
    with pytest.raises(ClipConfigError, match="neither a file nor a pretrained tag"):
        load_clip({"kind": "open_clip", "arch": "ViT-B-32-quickgelu", "pretrained": "nonsense"}, offline=True)
    with pytest.raises(FileNotFoundError):
        load_clip({"kind": "open_clip", "arch": tiny_arch, "pretrained": str(tmp_path / "missing.pt")})
    with pytest.raises(KeyError, match="Valid names: embedded, open_clip"):
        load_clip({"kind": "nope"})
