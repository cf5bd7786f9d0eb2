"""The adapter registry: name (the `adapter:` key of conf/dataset/*.yaml) -> loader function.

A loader is `fn(spec: dict, split: str, offline: bool) -> datasets.Dataset` with the uniform columns
of spae.data.schema; `split` is already the dataset's own split name (spec train_split/eval_split).
"""
from spae.registry import Registry

ADAPTERS = Registry("dataset adapter")
