"""Episode sampler: Frozen's N-way / inner-shot / repeats protocol, determinism and input validation."""
from __future__ import annotations

from collections import Counter

import pytest

from spae.fewshot.episodes import sample_episodes

NAMES = ["cat", "dog", "ship", "car", "bird", "frog", "ankle boot"]
LABELS = [i % len(NAMES) for i in range(7 * 8)]  # 8 images per class


@pytest.mark.parametrize("n_way,shots,repeats", [(2, 1, 0), (5, 3, 0), (5, 1, 3), (2, 5, 1)])
def test_episode_structure(n_way, shots, repeats):
    episodes = sample_episodes(LABELS, n_way, shots, 20, seed=3, repeats=repeats, label_names=NAMES)
    assert len(episodes) == 20
    for e in episodes:
        assert len(set(e.classes)) == n_way and set(e.classes) <= set(NAMES)
        assert e.query[1] in e.classes and NAMES[LABELS[e.query[0]]] == e.query[1]
        assert len(e.support) == n_way * shots * (1 + repeats)
        assert all(NAMES[LABELS[i]] == c for i, c in e.support)
        distinct = set(e.support)
        assert len(distinct) == n_way * shots  # repeats show the same images again
        assert Counter(c for _, c in distinct) == {c: shots for c in e.classes}
        assert e.query[0] not in {i for i, _ in e.support}
        passes = [e.support[k * n_way * shots:(k + 1) * n_way * shots] for k in range(1 + repeats)]
        assert all(set(p) == distinct for p in passes)


def test_same_seed_same_episodes_and_induction_paired():
    a = sample_episodes(LABELS, 5, 1, 30, seed=7, label_names=NAMES)
    b = sample_episodes(LABELS, 5, 1, 30, seed=7, label_names=NAMES, task_induction=False)
    c = sample_episodes(LABELS, 5, 1, 30, seed=8, label_names=NAMES)
    assert [(e.support, e.query, e.classes) for e in a] == [(e.support, e.query, e.classes) for e in b]
    assert [e.support for e in a] != [e.support for e in c]
    assert all(not e.task_induction for e in b)
    # query classes are spread over the episode's classes, not always the first one
    assert len({e.classes.index(e.query[1]) for e in a}) > 1


def test_string_labels_and_index_subset():
    labels = ["cat", "dog", "cat", "dog", "cat", "dog", "bird"]
    episodes = sample_episodes(labels, 2, 1, 10, seed=0, indices=[0, 1, 2, 3, 4, 5])
    assert all(set(e.classes) == {"cat", "dog"} for e in episodes)


def test_validation_errors_are_clear():
    with pytest.raises(ValueError, match="only 7 classes"):
        sample_episodes(LABELS, 8, 1, 5, label_names=NAMES)
    with pytest.raises(ValueError, match="8 shots need 9 images per class"):
        sample_episodes(LABELS, 2, 8, 5, label_names=NAMES)
    with pytest.raises(ValueError, match="n_way >= 1"):
        sample_episodes(LABELS, 2, 0, 5, label_names=NAMES)
    with pytest.raises(ValueError, match="no entry in label_names"):
        sample_episodes([0, 1, 9], 2, 1, 5, label_names=["a", "b"])


def test_more_episodes_extend_a_smaller_draw():
    labels = [f"c{i % 7}" for i in range(140)]
    small = sample_episodes(labels, 5, 1, 10, seed=3, repeats=1)
    large = sample_episodes(labels, 5, 1, 25, seed=3, repeats=1)
    assert large[:10] == small and large[10:] != large[:10]
