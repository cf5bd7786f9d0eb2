"""How pretraining sets share the tokenizer's training stream (method.pretrain_mix)."""
from __future__ import annotations

from collections import Counter

import pytest

from spae.datamodule import MixedStreamSampler, PretrainDataModule, largest_remainder
from tests.test_tokenizer_training import tiny_dataset


def test_balanced_stream_gives_each_set_an_equal_share_whatever_its_size():
    sizes = [900, 30]  # a large and a small set; global indices 0..899 are the first, 900..929 the second
    stream = list(MixedStreamSampler(sizes, [1.0, 1.0], seed=0, start=0, length=4000))
    small = sum(i >= 900 for i in stream)
    assert small == 2000  # exactly half: the quotas are exact per block of 1000
    assert all(0 <= i < 930 for i in stream)
    # the small set is repeated in full passes: every image of it 2000 / 30 = 66 or 67 times
    counts = Counter(i for i in stream if i >= 900)
    assert set(counts) == set(range(900, 930)) and max(counts.values()) - min(counts.values()) <= 1


def test_mixed_stream_is_a_pure_function_of_the_position():
    sampler = MixedStreamSampler([50, 7, 13], [2.0, 1.0, 1.0], seed=3, start=0, length=2600)
    full = list(sampler)
    assert full == list(MixedStreamSampler([50, 7, 13], [2.0, 1.0, 1.0], seed=3, start=0, length=2600))
    for start in (1, 999, 1000, 1777):  # resuming anywhere, also across block edges, continues the stream
        assert list(MixedStreamSampler([50, 7, 13], [2.0, 1.0, 1.0], 3, start, 2600 - start)) == full[start:]
    assert full != list(MixedStreamSampler([50, 7, 13], [2.0, 1.0, 1.0], seed=4, start=0, length=2600))
    shares = Counter(0 if i < 50 else 1 if i < 57 else 2 for i in full[:2000])
    assert shares == {0: 1000, 1: 500, 2: 500}


def test_largest_remainder_sums_to_the_total():
    assert largest_remainder([1 / 3, 1 / 3, 1 / 3], 1000) in ([334, 333, 333], [333, 334, 333], [333, 333, 334])
    assert sum(largest_remainder([0.123, 0.456, 0.421], 1000)) == 1000


def test_datamodule_balances_only_when_asked_and_refuses_unknown_mixes():
    big, small = tiny_dataset(40), tiny_dataset(4)
    balanced = PretrainDataModule([big, small], 16, batch_size=4, seed=0, total_batches=10, mix="balanced")
    proportional = PretrainDataModule([big, small], 16, batch_size=4, seed=0, total_batches=10)
    in_small = lambda dm: sum(i >= 40 for i in dm.train_dataloader().sampler)  # noqa: E731
    assert 14 <= in_small(balanced) <= 26 and in_small(proportional) < 10  # ~half vs ~4 of 40
    with pytest.raises(ValueError, match="pretrain_mix"):
        PretrainDataModule([big], 16, batch_size=4, seed=0, total_batches=1, mix="uniform")
