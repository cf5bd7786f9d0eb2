"""What each compared method's renderings carry about the class, measured without an LLM.

From the renderings (spae.fewshot.methods: per image a list of word layers, a list of words, or a FloatTensor[n, D]
of prefix embeddings) and the images' class names:
- size and redundancy: tokens per image; distinct words per image over tokens per image, per layer; the share of
  images whose words of a layer are all one word (layers of more than one token: SPAE's layers >= 2, LQAE's grid,
  a CLIP top-k list); the distinct words used over all images;
- class information: leave-one-out 1-nearest-neighbour class accuracy over the rendered images, by Jaccard
  similarity of the word sets (cosine of the flattened embeddings for Frozen), beside chance (the majority class's
  share). An image's nearest neighbours tied at the best similarity share its vote equally, so the score is the
  expected accuracy of a random tie-break, deterministic and blind to the images' order. It estimates what an
  ideal in-context reader could get from the tokens alone.
`class_examples` lists the first images' words per class (layers separated by " | ").
`nearest_support_accuracy` is the same reader on the bench's own episodes: each query takes the class of the
support image most similar to it (the same similarities; ties split), so it sees exactly the shots the LLM sees.
The gap between it and the LLM's accuracy is what the in-context reader loses; the gap between it and chance is
what the tokens carry at that number of shots.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import torch

EXAMPLES_PER_CLASS = 5


def as_layers(rendering: Any) -> list[list[str]] | None:
    """A word rendering as its layers (a flat word list is one layer); None for an embedding rendering."""
    if isinstance(rendering, torch.Tensor):
        return None
    if isinstance(rendering, str):
        return [rendering.split()]
    rendering = list(rendering)
    if rendering and isinstance(rendering[0], (list, tuple)):
        return [[str(w) for w in layer] for layer in rendering]
    return [[str(w) for w in rendering]]


def layer_stats(layers_per_image: Sequence[list[list[str]]]) -> list[dict]:
    """Per layer: tokens per image, mean distinct / tokens per image, and (layers of > 1 token) the share of
    images whose words are all one word."""
    depth = max(len(layers) for layers in layers_per_image)
    out = []
    for li in range(depth):
        words = [layers[li] for layers in layers_per_image if li < len(layers) and layers[li]]
        if not words:
            continue
        sizes = [len(w) for w in words]
        row = {"layer": li + 1, "tokens_per_image": sum(sizes) / len(sizes),
               "distinct_ratio": sum(len(set(w)) / len(w) for w in words) / len(words)}
        if max(sizes) > 1:
            row["all_one_word_share"] = sum(len(set(w)) == 1 for w in words if len(w) > 1) / \
                sum(len(w) > 1 for w in words)
        out.append(row)
    return out


def jaccard_matrix(word_sets: Sequence[set]) -> torch.Tensor:
    """[N, N] Jaccard similarity of word sets (0 where both are empty), exact in float64."""
    vocab = {w: i for i, w in enumerate(sorted(set().union(*word_sets)))}
    bags = torch.zeros(len(word_sets), max(len(vocab), 1), dtype=torch.float64)
    for row, words in enumerate(word_sets):
        bags[row, [vocab[w] for w in words]] = 1.0
    inter = bags @ bags.T
    sizes = bags.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))


def cosine_matrix(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """[N, N] cosine similarity of the flattened embedding renderings, in float64."""
    flat = torch.stack([e.detach().reshape(-1).to(torch.float64).cpu() for e in embeddings])
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return flat @ flat.T


def nearest_neighbour_accuracy(similarity: torch.Tensor, labels: Sequence[str]) -> float | None:
    """Leave-one-out 1-NN class accuracy; the neighbours tied at an image's best similarity split its vote
    (the expected accuracy of a random tie-break). None with fewer than 2 images."""
    n = len(labels)
    if n < 2:
        return None
    if similarity.shape != (n, n):
        raise ValueError(f"similarity must be [{n}, {n}] for {n} labels, got {list(similarity.shape)}")
    sim = similarity.clone()
    sim.fill_diagonal_(float("-inf"))
    tied = sim == sim.max(dim=1, keepdim=True).values
    ids = {c: i for i, c in enumerate(sorted(set(labels)))}
    codes = torch.tensor([ids[c] for c in labels])
    same = codes[:, None] == codes[None, :]
    return float(((tied & same).sum(1).double() / tied.sum(1).double()).mean())


def chance_level(labels: Sequence[str]) -> float | None:
    """The majority class's share: what always answering the commonest class scores."""
    return max(Counter(labels).values()) / len(labels) if labels else None


def method_token_content(rendered: Mapping[Any, Any], labels: Mapping[Any, str]) -> dict:
    """The measures of the module docstring for one method: `rendered` {image key: rendering}, `labels` {image
    key: class name} (every rendered key needs one)."""
    missing = [k for k in rendered if k not in labels]
    if missing:
        raise ValueError(f"no class name for rendered image(s) {missing[:5]}")
    keys = list(rendered)
    names = [labels[k] for k in keys]
    out = {"images": len(keys), "chance": chance_level(names)}
    if keys and isinstance(rendered[keys[0]], torch.Tensor):
        out["tokens_per_image"] = sum(int(rendered[k].shape[0]) for k in keys) / len(keys)
        out["class_1nn_accuracy"] = nearest_neighbour_accuracy(cosine_matrix([rendered[k] for k in keys]), names)
        out["similarity"] = "cosine of the flattened embeddings"
        return out
    layers = [as_layers(rendered[k]) for k in keys]
    words = [[w for layer in ls for w in layer] for ls in layers]
    out["tokens_per_image"] = sum(len(w) for w in words) / len(keys) if keys else 0.0
    out["distinct_ratio"] = sum(len(set(w)) / len(w) for w in words if w) / max(1, sum(bool(w) for w in words))
    out["per_layer"] = layer_stats(layers) if keys else []
    out["words_used"] = len({w for ws in words for w in ws})
    out["class_1nn_accuracy"] = nearest_neighbour_accuracy(jaccard_matrix([set(w) for w in words]), names)
    out["similarity"] = "Jaccard of the word sets"
    return out


def token_content(renderings: Mapping[str, Mapping[Any, Any]], labels: Mapping[Any, str]) -> dict[str, dict]:
    """{method slug: method_token_content} for every method's renderings of the same images."""
    return {slug: method_token_content(rendered, labels) for slug, rendered in renderings.items()}


def show_words(rendering: Any) -> str:
    """One image's words: layers separated by " | "."""
    return " | ".join(" ".join(layer) for layer in as_layers(rendering))


def class_examples(renderings: Mapping[str, Mapping[Any, Any]], labels: Mapping[Any, str],
                   per_class: int = EXAMPLES_PER_CLASS) -> dict[str, dict[str, list[str]]]:
    """{class: {method slug: the words of the class's first `per_class` rendered images}} for the word methods,
    classes in order of first appearance, images in the renderings' order."""
    out: dict[str, dict[str, list[str]]] = {}
    for slug, rendered in renderings.items():
        if any(isinstance(r, torch.Tensor) for r in rendered.values()):
            continue
        for key, rendering in rendered.items():
            shown = out.setdefault(labels[key], {}).setdefault(slug, [])
            if len(shown) < per_class:
                shown.append(show_words(rendering))
    return out


# ------------------------------------------------------------------------------------------ episodes
def pair_similarity(a: Any, b: Any) -> float:
    """Jaccard similarity of two word renderings' word sets, or cosine of two embedding renderings."""
    if isinstance(a, torch.Tensor):
        return float(cosine_matrix([a, b])[0, 1])
    words_a = {w for layer in as_layers(a) for w in layer}
    words_b = {w for layer in as_layers(b) for w in layer}
    union = words_a | words_b
    return len(words_a & words_b) / len(union) if union else 0.0


def episode_credit(rendered: Mapping[Any, Any], episode: Any) -> float:
    """1 when the support image most similar to the query shows the query's class; tied supports split it."""
    query_index, target = episode.query
    scores = [(pair_similarity(rendered[query_index], rendered[i]), name) for i, name in episode.support]
    best = max(score for score, _ in scores)
    tied = [name for score, name in scores if score == best]
    return sum(name == target for name in tied) / len(tied)


def nearest_support_accuracy(renderings: Mapping[str, Mapping[Any, Any]], episodes: Mapping[str, Sequence[Any]]
                             ) -> dict[str, dict[str, dict]]:
    """{method slug: {cell key: {"accuracy", "n"}}}: the nearest-support reader on every cell's episodes
    (spae.fewshot.episodes.Episode: support [(image index, class)], query (image index, class))."""
    out: dict[str, dict[str, dict]] = {}
    for slug, rendered in renderings.items():
        out[slug] = {}
        for cell_key, eps in episodes.items():
            credits = [episode_credit(rendered, e) for e in eps]
            out[slug][cell_key] = {"accuracy": sum(credits) / len(credits) if credits else None, "n": len(credits)}
    return out


def nearest_support_markdown(per_cell: dict[str, dict[str, dict]], display: Mapping[str, str]) -> str:
    """The table "Nearest-support reader on the same episodes (no LLM)": accuracy % per method and cell."""
    cells = list(next(iter(per_cell.values()), {}))
    lines = ["#### Nearest-support reader on the same episodes (no LLM)", "",
             "Each query gets the class of its most similar support image (Jaccard of word sets; cosine of "
             "embeddings for prefix methods; ties split): what the tokens alone give with exactly the LLM's shots. "
             "Accuracy %; compare with the LLM's exact match and constrained choice above.", "",
             "| method | " + " | ".join(cells) + " |", "|---|" + "---:|" * len(cells)]
    for slug, row in per_cell.items():
        lines.append(f"| {display.get(slug, slug)} | " + " | ".join(_percent(row[c]["accuracy"]) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ report
def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


def _per_layer(rows: list[dict], key: str) -> str:
    values = [f"{100 * r[key]:.0f}" if key in r else "-" for r in rows]
    return " / ".join(values) if values else "-"


def token_content_markdown(content: dict[str, dict], display: Mapping[str, str]) -> str:
    """The table "What the tokens carry (no LLM)": one row per method (`display`: slug -> label)."""
    lines = ["#### What the tokens carry (no LLM)", "",
             "Over the rendered episode images: distinct words / tokens per image and images whose words are all "
             "one word (%, per layer l1 / l2 / ...), words used over all images, and leave-one-out 1-nearest-"
             "neighbour class accuracy from the tokens alone (Jaccard of word sets; cosine of embeddings for "
             "prefix methods; ties split) beside chance (the commonest class's share).", "",
             "| method | tokens per image | distinct % per layer | all one word % per layer | words used | "
             "1-NN class accuracy % | chance % |", "|---|---:|---|---|---:|---:|---:|"]
    for slug, c in content.items():
        rows = c.get("per_layer") or []
        lines.append(f"| {display.get(slug, slug)} | {c['tokens_per_image']:g} | {_per_layer(rows, 'distinct_ratio')} "
                     f"| {_per_layer(rows, 'all_one_word_share')} | {c.get('words_used', '-')} | "
                     f"{_percent(c['class_1nn_accuracy'])} | {_percent(c['chance'])} |")
    return "\n".join(lines) + "\n"


def examples_markdown(examples: dict[str, dict[str, list[str]]], display: Mapping[str, str]) -> str:
    """The section "Top words of 5 images per class": per class, each word method's words of its first images."""
    lines = [f"#### Top words of {EXAMPLES_PER_CLASS} images per class", "",
             "The words each method gives the first images of every evaluation class (layers separated by "
             "\" | \").", ""]
    for name, per_method in examples.items():
        lines += [f"**{name}**", ""]
        lines += [f"- {display.get(slug, slug)}: " + "; ".join(f"`{w}`" for w in shown)
                  for slug, shown in per_method.items()]
        lines.append("")
    return "\n".join(lines)


def report(renderings: Mapping[str, Mapping[Any, Any]], labels: Mapping[Any, str], display: Mapping[str, str],
           episodes: Mapping[str, Sequence[Any]] | None = None) -> tuple[dict[str, dict], str]:
    """(token_content of every method, the Markdown of its table, of the nearest-support reader on `episodes`
    (each method's entry gets "nearest_support": {cell key: {"accuracy", "n"}}) and of the per-class examples)."""
    content = token_content(renderings, labels)
    markdown = token_content_markdown(content, display) + "\n"
    if episodes:
        per_cell = nearest_support_accuracy(renderings, episodes)
        for slug, cells in per_cell.items():
            content[slug]["nearest_support"] = cells
        markdown += nearest_support_markdown(per_cell, display) + "\n"
    return content, markdown + examples_markdown(class_examples(renderings, labels), display)


__all__ = ["as_layers", "chance_level", "class_examples", "cosine_matrix", "episode_credit", "examples_markdown",
           "jaccard_matrix", "layer_stats", "method_token_content", "nearest_neighbour_accuracy",
           "nearest_support_accuracy", "nearest_support_markdown", "pair_similarity", "report", "show_words",
           "token_content", "token_content_markdown"]
