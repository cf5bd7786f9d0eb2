"""In-context few-shot speed: our HFLocalBackend path vs one plain `model.generate` call per episode.

Run from the repo root::

    .venv/bin/python -m benchmarks.perf.incontext --llm smollm2_135m --episodes 16
    .venv/bin/python -m benchmarks.perf.incontext --llm gemma3_270m --episodes 8 --json out.json

The LLM comes from conf/llm/<name>.yaml through spae.llm.loading.load_llm (the converted copy in the
cache dir is reused). "Images" are random whole-word tokens of the LLM's own vocabulary (5 per image by
default, like SPAE's first two pyramid layers), so no tokenizer model is needed. The same 5-way 1-shot
episodes (task induction on, conf/prompt/frozen.yaml) are answered by:

- plain:       one `model.generate(do_sample=False, max_new_tokens=k)` call per episode, cut at the stop;
- plain+stop:  the same with transformers' own `stop_strings` (stops early, still one call per episode);
- ours:        HFLocalBackend.generate over all episodes (batching, prefix KV reuse, per-row early stop).

It checks that all three give identical answers, and reports episodes/s. It also times the optional
log-likelihood ranking (5 class names per episode share the prompt): with and without prefix reuse.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


def word_vocabulary(tokenizer, min_len: int = 3) -> list[str]:
    """Whole lower-case words that are single tokens with a leading space (the kind SPAE's codebook uses)."""
    words = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if text.startswith(" ") and re.fullmatch(r"[a-z]+", text[1:]) and len(text) > min_len:
            words.append(text[1:])
    return words


def make_images(words: list[str], n_classes: int, per_class: int, words_per_image: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    class_names = [words[i] for i in torch.randperm(len(words), generator=g)[:n_classes].tolist()]
    labels = [c for c in range(n_classes) for _ in range(per_class)]
    image_words = [[words[i] for i in torch.randint(len(words), (words_per_image,), generator=g).tolist()]
                   for _ in labels]
    return class_names, labels, image_words


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def plain_with_stop_strings(model, tokenizer, prompt: str, max_new_tokens: int, stop: list[str]) -> str:
    from spae.llm.backends import cut_at_stop

    enc = tokenizer(prompt, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                         stop_strings=stop, tokenizer=tokenizer)
    return cut_at_stop(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True), stop)


def run(args) -> dict:
    from spae.fewshot.episodes import sample_episodes
    from spae.fewshot.prompts import PromptTemplate, render_prompt
    from spae.llm.hf_local import HFLocalBackend, plain_generate
    from spae.llm.loading import load_llm

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = yaml.safe_load((REPO / "conf" / "llm" / f"{args.llm}.yaml").read_text())
    loaded = load_llm(spec, args.cache_dir)
    model, tok = loaded.model, loaded.tokenizer
    template = PromptTemplate.from_yaml(REPO / "conf" / "prompt" / f"{args.prompt}.yaml")
    words = word_vocabulary(tok)
    class_names, labels, image_words = make_images(words, 10, 6, args.words_per_image, args.seed)
    episodes = sample_episodes(labels, args.n_way, args.shots, args.episodes, seed=args.seed, label_names=class_names)
    prompts = [render_prompt(e, template, image_words.__getitem__) for e in episodes]
    n_tokens = [len(tok(p)["input_ids"]) for p in prompts]
    k, stop = template.max_new_tokens, template.stop

    plain, t_plain = timed(lambda: [plain_generate(model, tok, p, k, stop) for p in prompts])
    plain_stop, t_plain_stop = timed(lambda: [plain_with_stop_strings(model, tok, p, k, stop) for p in prompts])
    ours_backend = HFLocalBackend(model, tok, batch_size=args.batch_size)
    ours, t_ours = timed(lambda: ours_backend.generate(prompts, k, stop))

    pairs = [(p, template.answer_text(c)) for p, e in zip(prompts, episodes) for c in e.classes]
    no_share = HFLocalBackend(model, tok, batch_size=args.batch_size, share_prefixes=False)
    ll_plain, t_ll_plain = timed(lambda: no_share.loglikelihood(pairs))
    ll_ours, t_ll_ours = timed(lambda: ours_backend.loglikelihood(pairs))
    ll_gap = max(abs(a - b) for a, b in zip(ll_plain, ll_ours))

    n = len(prompts)
    return {
        "llm": args.llm, "episodes": n, "n_way": args.n_way, "shots": args.shots, "prompt": args.prompt,
        "words_per_image": args.words_per_image, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "prompt_tokens_mean": sum(n_tokens) / n, "max_new_tokens": k,
        "load_seconds": round(loaded.load_seconds, 2),
        "generate": {
            "plain_eps": n / t_plain, "plain_stop_eps": n / t_plain_stop, "ours_eps": n / t_ours,
            "speedup_vs_plain": t_plain / t_ours, "speedup_vs_plain_stop": t_plain_stop / t_ours,
            "identical_plain": ours == plain, "identical_plain_stop": ours == plain_stop,
            "answers_sample": ours[:5],
        },
        "loglikelihood_rank": {
            "pairs": len(pairs), "no_prefix_reuse_eps": n / t_ll_plain, "prefix_reuse_eps": n / t_ll_ours,
            "speedup": t_ll_plain / t_ll_ours, "max_abs_logprob_gap": ll_gap,
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="smollm2_135m", help="conf/llm/<name>.yaml (a local hf model)")
    parser.add_argument("--cache-dir", default=os.environ.get("SPAE_CACHE_DIR", str(REPO / ".cache" / "spae")))
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--words-per-image", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt", default="frozen")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        from spae.io import write_text_atomic

        write_text_atomic(args.json, text + "\n")
    ok = result["generate"]["identical_plain"] and result["generate"]["identical_plain_stop"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
