"""A local transformers causal LM behind the LLMBackend interface, tuned for many short in-context queries.

Why a hand-written decode loop instead of `model.generate`: `generate` neither reuses the KV cache of a
prompt prefix shared by several queries nor drops finished rows from a batch. This loop does both and is
checked (tests) to give exactly the answers of one plain `model.generate(do_sample=False)` call per prompt.

Speed-ups, all exact up to float rounding:
- prefix reuse: prompts are grouped by their common token prefix; the prefix is run once, its
  DynamicCache is copied and expanded over the group's rows (Cache.batch_repeat_interleave);
- batching: a group's suffixes run together, right-aligned, padding between prefix and suffix masked out
  (plain left padding when there is no shared prefix);
- early stop: a row leaves the batch (Cache.batch_select_indices) as soon as it writes a stop string, EOS
  or reaches max_new_tokens.
Models with sliding-window attention (e.g. Gemma 3) count padding inside the window, so rows whose
prompt plus answer reaches the window are run one by one (no padding; prefix reuse still applies).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import torch

from spae.llm.backends import LLMBackend, Segment, cut_at_stop


@dataclass
class _Group:
    prefix_len: int  # tokens shared by every row of the group, run once
    rows: list[int] = field(default_factory=list)


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_prefix_groups(token_lists: list[list[int]], reserve: list[int], min_shared: int) -> list[_Group]:
    """Group rows whose token lists share at least `min_shared` leading tokens.

    Rows are sorted lexicographically so that shared prefixes are adjacent, then cut greedily. Each row
    keeps at least reserve[i] + 1 tokens outside the prefix (the tokens whose logits are needed).
    Rows sharing nothing worth reusing form one group with prefix_len 0 (plain left-padded batch).
    """
    order = sorted(range(len(token_lists)), key=lambda i: token_lists[i])
    groups: list[_Group] = []
    unshared = _Group(prefix_len=0)

    def flush(rows: list[int], common: int) -> None:
        limit = min(len(token_lists[i]) - reserve[i] - 1 for i in rows)
        prefix = min(common, limit)
        if len(rows) >= 2 and prefix >= min_shared:
            groups.append(_Group(prefix_len=prefix, rows=list(rows)))
        else:
            unshared.rows.extend(rows)

    current: list[int] = []
    common = 0
    for i in order:
        if current:
            shared = min(common, _common_prefix_len(token_lists[current[-1]], token_lists[i]))
            if shared >= min_shared:
                current.append(i)
                common = shared
                continue
            flush(current, common)
        current, common = [i], len(token_lists[i])
    if current:
        flush(current, common)
    if unshared.rows:
        groups.append(unshared)
    return groups


class HFLocalBackend(LLMBackend):
    def __init__(self, model, tokenizer, batch_size: int = 8, share_prefixes: bool = True,
                 min_shared_prefix: int = 16, name: str = "hf_local"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.share_prefixes = share_prefixes
        self.min_shared_prefix = max(1, min_shared_prefix)
        self.name = name
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (sorted(self.eos_ids) or [0])[0]
        self.pad_id = int(pad)
        text_cfg = model.config.get_text_config(decoder=True)
        self.sliding_window = getattr(text_cfg, "sliding_window", None)
        self._special_prefix = tokenizer("", add_special_tokens=True)["input_ids"]

    @classmethod
    def from_loaded(cls, loaded, **kwargs) -> "HFLocalBackend":
        """From a spae.llm.loading.LoadedLLM (fields model, tokenizer, name)."""
        return cls(loaded.model, loaded.tokenizer, name=getattr(loaded, "name", "hf_local"), **kwargs)

    def describe(self) -> dict:
        return {"backend": "hf_local", "name": self.name, "batch_size": self.batch_size,
                "share_prefixes": self.share_prefixes, "dtype": str(next(self.model.parameters()).dtype)}

    # ---------------------------------------------------------------- public API
    @torch.inference_mode()
    def generate(self, prompts: list[str], max_new_tokens: int, stop: list[str]) -> list[str]:
        return self._generate_text(prompts, max_new_tokens, stop, None)[0]

    def choice_scoring_unavailable(self, with_embeddings: bool = False) -> str | None:
        return None

    @torch.inference_mode()
    def score_choices(self, prompts: list, choices: list[list[str]]) -> list[list[float]]:
        """Each prompt is run once; its candidates are scored from its KV cache (no decoding)."""
        return self.generate_with_choices(prompts, choices, 0, [])[1]

    @torch.inference_mode()
    def generate_with_choices(self, prompts: list, choices: list[list[str]], max_new_tokens: int,
                              stop: list[str]) -> tuple[list[str], list[list[float]]]:
        """One prefill per prompt serves both: the greedy answer is decoded from it, and every candidate
        continuation is scored from a row-selected view of its KV cache, all candidates of a batch at once.
        Scores: total log-probability (natural log) of the candidate's tokens, tokenized without special tokens."""
        if len(choices) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(choices)} candidate lists")
        choice_ids = [[self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in cs] for cs in choices]
        if all(isinstance(p, str) for p in prompts):
            return self._generate_text(prompts, max_new_tokens, stop, choice_ids)
        segments = [p if isinstance(p, list) else [p] for p in prompts]
        return self._generate_embeds(segments, max_new_tokens, stop, choice_ids)

    def _generate_text(self, prompts: list[str], max_new_tokens: int, stop: list[str],
                       choice_ids: list[list[list[int]]] | None) -> tuple[list[str], list[list[float]]]:
        tokens = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        for i, t in enumerate(tokens):
            if not t:
                raise ValueError(f"prompt {i} tokenizes to nothing; give a non-empty prompt")
        out: list[str] = [""] * len(prompts)
        scores: list[list[float]] = [[] for _ in prompts]
        reach = max(max_new_tokens, _longest(choice_ids))
        for group in self._groups(tokens, [0] * len(tokens)):
            prefix_cache = self._prefix_cache(tokens[group.rows[0]][: group.prefix_len])
            for chunk in self._chunks(group, tokens, reach):
                suffixes = [tokens[i][group.prefix_len:] for i in chunk]
                logits, cache, mask = self._prefill_ids(suffixes, prefix_cache, group.prefix_len, keep=1)
                if choice_ids is not None:
                    chunk_scores = self._score_from_cache(logits[:, -1], cache, mask, [choice_ids[i] for i in chunk])
                    for i, s in zip(chunk, chunk_scores):
                        scores[i] = s
                texts = self._decode(logits[:, -1], cache, mask, max_new_tokens, stop)
                for i, text in zip(chunk, texts):
                    out[i] = text
        return out, scores

    @torch.inference_mode()
    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        tokens, n_cont = [], []
        for context, continuation in pairs:
            ctx = self.tokenizer(context, add_special_tokens=True)["input_ids"]
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not ctx:
                raise ValueError("log-likelihood needs a non-empty context (or a tokenizer that adds BOS)")
            tokens.append(ctx + cont)
            n_cont.append(len(cont))
        scores = [0.0] * len(pairs)
        for group in self._groups(tokens, n_cont):
            prefix_cache = self._prefix_cache(tokens[group.rows[0]][: group.prefix_len])
            for chunk in _split(group.rows, self.batch_size):
                keep = max(n_cont[i] for i in chunk) + 1
                suffixes = [tokens[i][group.prefix_len:] for i in chunk]
                logits, _, _ = self._prefill_ids(suffixes, prefix_cache, group.prefix_len, keep=keep)
                logp = torch.log_softmax(logits.float(), dim=-1)
                for row, i in enumerate(chunk):
                    n = n_cont[i]
                    if n == 0:
                        continue
                    target = torch.tensor(tokens[i][-n:], device=logp.device)
                    # the logits predicting the last n tokens sit at columns keep-n-1 .. keep-2
                    picked = logp[row, keep - n - 1: keep - 1].gather(-1, target[:, None])
                    scores[i] = float(picked.sum())
        return scores

    @torch.inference_mode()
    def generate_from_embeds(self, prompts: list[list[Segment]], max_new_tokens: int,
                             stop: list[str]) -> list[str]:
        return self._generate_embeds(prompts, max_new_tokens, stop, None)[0]

    def _generate_embeds(self, prompts: list[list[Segment]], max_new_tokens: int, stop: list[str],
                         choice_ids: list[list[list[int]]] | None) -> tuple[list[str], list[list[float]]]:
        embeds = [self._embed_segments(p) for p in prompts]
        out: list[str] = []
        scores: list[list[float]] = []
        for chunk in _split(list(range(len(prompts))), self.batch_size):
            logits, cache, mask = self._prefill_embeds([embeds[i] for i in chunk])
            if choice_ids is not None:
                scores.extend(self._score_from_cache(logits[:, -1], cache, mask, [choice_ids[i] for i in chunk]))
            out.extend(self._decode(logits[:, -1], cache, mask, max_new_tokens, stop))
        return out, (scores or [[] for _ in prompts])

    def _score_from_cache(self, first_logits: torch.Tensor, cache, mask: torch.Tensor,
                          choice_ids: list[list[list[int]]]) -> list[list[float]]:
        """Total log-probability of each row's candidate token lists after that row's prompt.

        first_logits [B, V] predict every candidate's first token. The later tokens run in batches of at most
        batch_size candidate rows over a row-selected view of the prompt's cache (right-padded: padding after
        a candidate's tokens cannot change them), at positions continuing each prompt. `cache` is left intact
        for decoding.
        """
        logp_first = torch.log_softmax(first_logits.float(), dim=-1)
        flat = [(row, k, ids) for row, cands in enumerate(choice_ids) for k, ids in enumerate(cands)]
        scores = [[0.0] * len(cands) for cands in choice_ids]
        for row, k, ids in flat:
            if ids:
                scores[row][k] = float(logp_first[row, ids[0]])
        longer = [f for f in flat if len(f[2]) > 1]
        for part in _split(list(range(len(longer))), self.batch_size):
            rows = [longer[j][0] for j in part]
            cands = [longer[j][2] for j in part]
            width = max(len(c) for c in cands) - 1  # the last token is predicted, never fed
            ids = torch.full((len(part), width), self.pad_id, dtype=torch.long)
            cand_mask = torch.zeros((len(part), width), dtype=torch.long)
            for r, c in enumerate(cands):
                ids[r, : len(c) - 1] = torch.tensor(c[:-1])
                cand_mask[r, : len(c) - 1] = 1
            index = torch.tensor(rows, device=self.device)
            prompt_mask = mask[index]
            full_mask = torch.cat([prompt_mask, cand_mask.to(self.device)], dim=1)
            positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(width, device=self.device)[None]
            out = self.model(input_ids=ids.to(self.device), attention_mask=full_mask, position_ids=positions,
                             cache=_rows_view(cache, index), use_cache=True, logits_to_keep=0)
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            for r, j in enumerate(part):
                row, k, c = longer[j]
                target = torch.tensor(c[1:], device=logp.device)
                scores[row][k] += float(logp[r, : len(c) - 1].gather(-1, target[:, None]).sum())
        return scores

    # ---------------------------------------------------------------- planning
    def _groups(self, tokens: list[list[int]], reserve: list[int]) -> list[_Group]:
        if not self.share_prefixes:
            return [_Group(prefix_len=0, rows=list(range(len(tokens))))]
        return plan_prefix_groups(tokens, reserve, self.min_shared_prefix)

    def _chunks(self, group: _Group, tokens: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Batches of a group's rows; rows that would reach a sliding window run alone (no padding)."""
        if self.sliding_window is None:
            return _split(group.rows, self.batch_size)
        fits = [i for i in group.rows if len(tokens[i]) + max_new_tokens < self.sliding_window - 1]
        alone = [[i] for i in sorted(set(group.rows) - set(fits))]
        return _split(fits, self.batch_size) + alone

    # ---------------------------------------------------------------- model calls
    def _prefix_cache(self, prefix: list[int]):
        if not prefix:
            return None
        ids = torch.tensor([prefix], device=self.device)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
        return out.cache

    def _prefill_ids(self, suffixes: list[list[int]], prefix_cache, prefix_len: int, keep: int):
        """Run right-aligned suffixes after a (copied, expanded) prefix cache; logits of the last `keep` columns."""
        batch, width = len(suffixes), max(len(s) for s in suffixes)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        suffix_mask = torch.zeros((batch, width), dtype=torch.long)
        for row, s in enumerate(suffixes):
            ids[row, width - len(s):] = torch.tensor(s)
            suffix_mask[row, width - len(s):] = 1
        mask = torch.cat([torch.ones((batch, prefix_len), dtype=torch.long), suffix_mask], dim=1).to(self.device)
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)  # the shared prefix cache must stay pristine for the next chunk
            cache.batch_repeat_interleave(batch)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=keep)
        return out.logits, out.cache, mask

    def _embed_segments(self, segments: list[Segment]) -> torch.Tensor:
        """Concatenate embedded text pieces and given embedding tensors into one [n, D] sequence.

        Text pieces are tokenized separately (no special tokens), after the tokenizer's own special prefix
        (e.g. BOS). Tensors are in the space of the model's input-embedding module output (for Gemma that
        includes its sqrt(d) scale), i.e. exactly what `inputs_embeds` takes.
        """
        if isinstance(segments, (str, torch.Tensor)):
            raise TypeError("each prompt must be a list of segments (str or FloatTensor[n, D])")
        embed = self.model.get_input_embeddings()
        dim = embed.weight.shape[1]
        parts = []
        if self._special_prefix:
            parts.append(embed(torch.tensor(self._special_prefix, device=self.device)))
        for seg in segments:
            if isinstance(seg, str):
                ids = self.tokenizer(seg, add_special_tokens=False)["input_ids"]
                if ids:
                    parts.append(embed(torch.tensor(ids, device=self.device)))
            elif isinstance(seg, torch.Tensor):
                if seg.ndim != 2 or seg.shape[1] != dim:
                    raise ValueError(f"embedding segment must be FloatTensor[n, {dim}], got {tuple(seg.shape)}")
                parts.append(seg.to(device=self.device, dtype=embed.weight.dtype))
            else:
                raise TypeError(f"segment must be str or torch.Tensor, got {type(seg).__name__}")
        if not parts:
            raise ValueError("prompt has no segments")
        return torch.cat(parts, dim=0)

    def _prefill_embeds(self, embeds: list[torch.Tensor]):
        batch, width = len(embeds), max(e.shape[0] for e in embeds)
        dim = embeds[0].shape[1]
        x = torch.zeros((batch, width, dim), dtype=embeds[0].dtype, device=self.device)
        mask = torch.zeros((batch, width), dtype=torch.long, device=self.device)
        for row, e in enumerate(embeds):
            x[row, width - e.shape[0]:] = e
            mask[row, width - e.shape[0]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(inputs_embeds=x, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        return out.logits, out.cache, mask

    def _decode(self, next_logits: torch.Tensor, cache, mask: torch.Tensor, max_new_tokens: int,
                stop: list[str]) -> list[str]:
        """Greedy decoding; a row leaves the batch once it is finished (stop string, EOS, token budget)."""
        batch = next_logits.shape[0]
        generated: list[list[int]] = [[] for _ in range(batch)]
        active = list(range(batch))  # original row of each current batch position
        positions = mask.sum(-1, keepdim=True) - 1
        for step in range(max_new_tokens):
            next_ids = next_logits.argmax(dim=-1)
            keep = []
            for pos, row in enumerate(active):
                token = int(next_ids[pos])
                if token in self.eos_ids:
                    continue
                generated[row].append(token)
                if step + 1 < max_new_tokens and not self._has_stop(generated[row], stop):
                    keep.append(pos)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions, next_ids = mask[index], positions[index], next_ids[index]
                active = [active[p] for p in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions + 1
            out = self.model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions,
                             cache=cache, use_cache=True, logits_to_keep=1)
            next_logits, cache = out.logits[:, -1], out.cache
        return [cut_at_stop(self._text(g), stop) for g in generated]

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _has_stop(self, ids: list[int], stop: list[str]) -> bool:
        if not stop:
            return False
        text = self._text(ids)
        return any(s and s in text for s in stop)


def _longest(choice_ids: list[list[list[int]]] | None) -> int:
    return max((len(ids) for cands in choice_ids or [] for ids in cands), default=0)


def _rows_view(cache, index: torch.Tensor):
    """A cache holding the given rows (repeats allowed) of `cache`, which stays untouched: the layer objects are
    copied shallowly and their batch selection rebinds (never writes into) the key/value tensors; updates
    during the forward pass also rebind (torch.cat), so the prompt's cache stays pristine for decoding."""
    view = copy.copy(cache)
    view.layers = [copy.copy(layer) for layer in cache.layers]
    view.batch_select_indices(index)
    return view


def _split(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i: i + size] for i in range(0, len(rows), size)]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


@torch.inference_mode()
def plain_generate(model, tokenizer, prompt: str, max_new_tokens: int, stop: list[str]) -> str:
    """The reference: one plain `model.generate(do_sample=False)` call for one prompt, cut at the first stop."""
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=True)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                         do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    return cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop)
