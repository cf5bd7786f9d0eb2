"""Few-shot episodes for Frozen's open-ended "Real-Name miniImageNet" protocol, on any labelled image set.

Definitions (Tsimpoukelli et al. 2021, sec. 4 "Fast concept binding"):
- N-way: the number of categories in an episode; the query's category is one of them.
- inner shots: the number of distinct images of each category in the support set.
- repeats: how many more times each inner-shot is repeated in the context. Our reading: the support set
  (N x shots distinct images) is shown 1 + repeats times in a row, each pass in a fresh random order,
  so repeats=0 means every support image appears once. The images are the same in every pass.
- task induction: an introductory text naming the episode's categories ("Answer with dog or cat."); the
  prompt template renders it, the episode only records the flag.
Support order within a pass is shuffled, so the query's class is not given away by position.

Seeding: a cell's episodes are a pure function of (seed, n_way, shots, repeats) and the labels, drawn one
after another from one generator, so asking for more episodes extends the list: the first 100 of 400
episodes are the 100 episodes of a smaller run (their recorded answers are reused). Task induction does not
enter the seed, so the induction on/off cells use the very same episodes (paired comparison).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from spae.errors import InvalidConfigError


@dataclass(frozen=True)
class Episode:
    support: list[tuple[int, str]]  # (image index, class name) in the order shown, repeats included
    query: tuple[int, str]
    classes: list[str]  # the episode's N class names, in a random order (used by task induction)
    n_way: int
    shots: int
    repeats: int
    task_induction: bool
    episode_id: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def answer(self) -> str:
        return self.query[1]


def class_names_per_image(labels: Sequence, label_names: Sequence[str] | dict | None = None) -> list[str]:
    """Map labels (ints or names) to class names; `label_names` maps int labels to names."""
    if label_names is None:
        return [str(label) for label in labels]
    try:
        return [str(label_names[label]) for label in labels]
    except (IndexError, KeyError) as err:
        raise ValueError(f"label {err.args[0]!r} has no entry in label_names "
                         f"({len(label_names)} names given)") from None


def sample_episodes(labels: Sequence, n_way: int, shots: int, n_episodes: int, seed: int = 0,
                    repeats: int = 0, task_induction: bool = True,
                    label_names: Sequence[str] | dict | None = None,
                    indices: Sequence[int] | None = None, source: str = "the data") -> list[Episode]:
    """Draw `n_episodes` episodes from the images of the evaluation split.

    labels: the label of every image (int or class name), position = image index.
    indices: optionally, the image indices allowed (e.g. the evaluation split); default all.
    source: what the labels were read from (e.g. a dataset and its folder), named in the errors.
    Each episode: n_way distinct classes, `shots` distinct support images per class and a query image of
    one of those classes that is not in the support set.
    """
    if n_way < 1 or shots < 1 or repeats < 0 or n_episodes < 0:
        raise InvalidConfigError(f"need n_way >= 1, shots >= 1, repeats >= 0, n_episodes >= 0; got n_way={n_way}, "
                         f"shots={shots}, repeats={repeats}, n_episodes={n_episodes}")
    names = class_names_per_image(labels, label_names)
    pool = range(len(names)) if indices is None else indices
    by_class: dict[str, list[int]] = defaultdict(list)
    for i in pool:
        by_class[names[i]].append(int(i))
    if n_way > len(by_class):
        raise InvalidConfigError(f"n_way={n_way} but {source} has only {len(by_class)} "
                                 f"class{'es' if len(by_class) != 1 else ''} "
                                 f"({_listed(by_class)}); lower n_way to at most {len(by_class)} or use a "
                                 "dataset with more classes")
    eligible = sorted(c for c, members in by_class.items() if len(members) >= shots + 1)
    if len(eligible) < n_way:
        # repeats show the same support images again: a class needs shots + 1 distinct images whatever repeats
        short = {c: m for c, m in sorted(by_class.items()) if len(m) < shots + 1}
        raise InvalidConfigError(f"{shots} shots need {shots + 1} images per class (the shots + the query, all "
                                 f"distinct; repeats show the same images again) in at least {n_way} classes, "
                                 f"but {source} has {len(by_class)} classes of which only {len(eligible)} have "
                                 f"that many; {len(short)} have fewer: {_listed(short)}; lower shots or n_way, "
                                 "or add images to those classes")
    rng = np.random.default_rng([seed, n_way, shots, repeats])  # n_episodes left out: prefix-stable
    return [_draw(rng, by_class, eligible, n_way, shots, repeats, task_induction,
                  f"{n_way}way-{shots}shot-{repeats}rep-s{seed}-{e}") for e in range(n_episodes)]


def _listed(by_class: dict[str, list[int]], shown: int = 10) -> str:
    """ "cat: 1 image, dog: 2 images, ... (+N more)" for an error message."""
    items = [f"{c}: {len(m)} image{'s' if len(m) != 1 else ''}" for c, m in list(by_class.items())[:shown]]
    return ", ".join(items) + (f", ... (+{len(by_class) - shown} more)" if len(by_class) > shown else "")


def _draw(rng: np.random.Generator, by_class: dict[str, list[int]], eligible: list[str], n_way: int,
          shots: int, repeats: int, task_induction: bool, episode_id: str) -> Episode:
    classes = [eligible[i] for i in rng.choice(len(eligible), size=n_way, replace=False)]
    query_class = classes[int(rng.integers(n_way))]
    support: list[tuple[int, str]] = []
    query_index = -1
    for c in classes:
        take = shots + 1 if c == query_class else shots
        picked = [by_class[c][i] for i in rng.choice(len(by_class[c]), size=take, replace=False)]
        if c == query_class:
            query_index, picked = picked[-1], picked[:-1]
        support.extend((i, c) for i in picked)
    shown: list[tuple[int, str]] = []
    for _ in range(1 + repeats):
        shown.extend(support[i] for i in rng.permutation(len(support)))
    return Episode(support=shown, query=(query_index, query_class), classes=classes, n_way=n_way, shots=shots,
                   repeats=repeats, task_induction=task_induction, episode_id=episode_id)
