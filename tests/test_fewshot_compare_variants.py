"""bench.compare entries for the remedies of repeated words (issue 16): `model:` names another bench.methods entry
(a trained variant such as spae_dt, method.semantic.distinct_targets=true) and `distinct: true` encodes with
distinct words per layer; both get their own stable ids, labels and, for a variant, its own train stage key."""
from __future__ import annotations

import pytest
from test_stage_keys_eval_data import keys_of, resolved

from spae.fewshot.methods import ComparedMethod, parse_compare

REMEDY_RUN = ["+bench=mini_imagenet", "+method@bench.methods.spae_dt=spae",
              "bench.methods.spae_dt.semantic.distinct_targets=true",
              "bench.compare=[{method: spae, layers: 2}, {method: spae, layers: 2, distinct: true},"
              " {method: spae, model: spae_dt, layers: 2}, {method: clip_topk, k: 5}]"]


def test_model_and_distinct_keys_name_their_own_methods():
    methods = parse_compare([{"method": "spae", "layers": 2}, {"method": "spae", "model": "spae_dt", "layers": 2},
                             {"method": "spae", "layers": 2, "distinct": True}, {"method": "lqae", "distinct": True},
                             {"method": "spae", "model": "spae", "layers": 3}],
                            {"spae": {"kind": "tokenizer"}, "spae_dt": {"kind": "tokenizer"},
                             "lqae": {"kind": "tokenizer"}})
    assert [m.slug for m in methods] == ["spae-l2", "spae_dt-l2", "spae-l2-distinct", "lqae-distinct", "spae-l3"]
    assert [m.model for m in methods] == ["spae", "spae_dt", "spae", "lqae", "spae"]
    assert [m.distinct for m in methods] == [False, False, True, True, False]
    assert methods[1].display_label(5) == "SPAE [spae_dt] (5 tokens, layers 1-2)"
    assert methods[2].display_label(5) == "SPAE (5 tokens, layers 1-2, distinct words)"
    assert methods[4] == ComparedMethod("spae", 3)  # naming the method's own model changes nothing


@pytest.mark.parametrize("entry,match", [
    ({"method": "clip_topk", "k": 5, "model": "spae"}, "applies to spae and lqae"),
    ({"method": "frozen", "distinct": True}, "applies to spae and lqae"),
    ({"method": "spae", "distinct": "yes"}, "true/false"),
    ({"method": "spae", "model": "spae_xx"}, r"bench.methods.spae_xx.*\+method@bench.methods.spae_xx=spae"),
    ({"method": "spae", "model": "frozen"}, "'prefix' model, not a tokenizer"),
    ({"method": "spae", "modle": "spae_dt"}, "unknown keys"),
])
def test_bad_model_or_distinct_entries_fail_clearly(entry, match):
    with pytest.raises(ValueError, match=match):
        parse_compare([entry], {"spae": {"kind": "tokenizer"}, "frozen": {"kind": "prefix"}})


def test_the_remedy_run_composes_and_its_variant_trains_under_its_own_key(tmp_dirs):
    cfg = resolved([*REMEDY_RUN, *tmp_dirs])
    methods = parse_compare(cfg["bench"]["compare"], cfg["bench"]["methods"])
    assert [m.slug for m in methods] == ["spae-l2", "spae-l2-distinct", "spae_dt-l2", "clip_topk-k5"]
    assert sorted({m.model for m in methods if m.model}) == ["spae", "spae_dt"]  # the models the bench trains
    variant = cfg["bench"]["methods"]["spae_dt"]
    assert variant["semantic"]["distinct_targets"] is True and variant["name"] == "spae"
    assert cfg["bench"]["methods"]["spae"]["semantic"]["distinct_targets"] is False
    # as the few-shot stage trains a compared model: the train stage under bench.methods.<model> as `method`
    train_key = {m: keys_of(["train"], {**cfg, "method": cfg["bench"]["methods"][m]})["train"]
                 for m in ("spae", "spae_dt")}
    assert train_key["spae_dt"] != train_key["spae"]
    # the default remedy-free bench keeps SPAE's train key: distinct_targets=false is the schema's default
    plain = resolved(["+bench=mini_imagenet", *tmp_dirs])
    assert keys_of(["train"], {**plain, "method": plain["bench"]["methods"]["spae"]})["train"] == train_key["spae"]
