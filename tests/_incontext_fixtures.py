"""Shared by the in-context stage tests (captioning, VQA, few-shot): a tiny captioned VQA dataset in the HF
on-disk format (COCO-/VQAv2-like columns), and fakes for the models, the CLIP and the codebook/clip stages. The
stages are replaced for one run through the pipeline's `substitutes` (no registry is patched)."""
from __future__ import annotations

import datasets
import torch
from PIL import Image

from experiments.run import execute

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
SHAPES = ("square", "bar")


def tiny_captioned_vqa(folder, n_train: int = 24, n_test: int = 12):
    """save_to_disk DatasetDict (train/test): one row per question; images solid colours, a square or a bar.
    `answer` is the consensus, `answers` ten human answers in VQAv2's format (two written differently, one other)."""
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = {"image": [], "captions": [], "question": [], "answer": [], "answers": [], "image_id": [],
                "colour": []}
        for i in range(n):
            colour, shape = list(COLOURS)[i % 3], SHAPES[(i // 3) % 2]
            img = Image.new("RGB", (16, 16), (250, 250, 250))
            box = (2, 2, 14, 14) if shape == "square" else (6, 1, 10, 15)
            img.paste(COLOURS[colour], box)
            for question, answer in ((f"what color is the {shape}?", colour), ("is it a bar?", "yes" if shape == "bar" else "no")):
                rows["image"].append(img)
                rows["captions"].append([f"a {colour} {shape}", f"the {colour} {shape}"])
                rows["question"].append(question)
                rows["answer"].append(answer)
                humans = [answer] * 7 + [answer.title() + "."] * 2 + ["maybe"]
                rows["answers"].append([{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                        for k, a in enumerate(humans)])
                rows["image_id"].append(i)
                rows["colour"].append(colour)
        splits[split] = datasets.Dataset.from_dict(rows)
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def words_renderer(prefix: str):
    """Words from the image's mean colour: images of one colour share words, so the dummy LLM can answer."""

    def render(images: torch.Tensor) -> list[list[str]]:
        out = []
        for img in images:
            channel = int(img.mean(dim=(1, 2)).argmax())  # the shape's colour channel (on a white background)
            out.append([f"{prefix}colour{channel}", f"{prefix}image"])
        return out

    return render


def fake_build_renderers(ctx, methods, trained):
    return {m.slug: (words_renderer(m.slug[:2]), 16) for m in methods}


def fake_model(ctx):
    """Stands in for a training stage (`train[spae]`, `frozen_train[frozen]`, ...): the fake renderers need no
    weights, only the stage result."""
    return {"fake": True}


def no_output(ctx):
    return {}


# the stages a fast in-context test replaces (by stage name: every instance of `train` too)
FAKE_STAGES = {"codebook": no_output, "clip": no_output, "train": fake_model, "frozen_train": fake_model}


def execute_with_fakes(cfg, **more_substitutes):
    """experiments.run.execute with FAKE_STAGES (and `more_substitutes`) run instead of the real stages."""
    return execute(cfg, substitutes={**FAKE_STAGES, **more_substitutes})


class ColourClip:
    """A stand-in CLIP: image embedding = mean RGB, text embedding = the colour it names."""
    image_size = 16
    description = "colour probe"
    identity = "fake"

    def encode_images(self, images):
        return torch.nn.functional.normalize(1.0 - images.mean(dim=(2, 3)), dim=-1)

    def encode_texts(self, texts):
        basis = {"red": [0.0, 1.0, 1.0], "green": [1.0, 0.0, 1.0], "blue": [1.0, 1.0, 0.0]}
        rows = [next((v for k, v in basis.items() if k in t), [1.0, 1.0, 1.0]) for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def install_fakes(monkeypatch):
    """Fake renderers and the colour CLIP (the fake stages come with execute_with_fakes)."""
    import spae.clip.loading
    from experiments import incontext

    monkeypatch.setattr(incontext, "build_renderers", fake_build_renderers)
    monkeypatch.setattr(spae.clip.loading, "load_clip_from_stage", lambda stage_dir, cache_dir=None: ColourClip())


def base_overrides(tmp_path, bench: str, cache: str = "cache", runs: str = "runs") -> list[str]:
    return [f"+bench={bench}", f"paths.cache_dir={tmp_path / cache}", f"paths.runs_dir={tmp_path / runs}",
            "logger=none", "llm=smollm2_135m", "llm.backend=dummy", "~data.pretrain", "~data.classification",
            "~data.generation", "bench.compare=[{method: spae, layers: 2},{method: lqae},{method: clip_topk, k: 3}]",
            "bench.items=10", "bench.shots=4", "bench.chunk_size=3"]
