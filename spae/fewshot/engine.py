"""Run few-shot episodes through an LLM backend, record every prompt and answer, resume after interruption.

Every finished episode is appended to a JSONL file and flushed to disk at once; a rerun with resume=True
reads the file, keeps the episodes already done (a half-written last line is dropped) and runs only the
rest. Episodes are sent to the backend in chunks so it can batch them and share prompt prefixes.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence


from spae.fewshot.episodes import Episode, sample_episodes
from spae.fewshot.prompts import ImageRendering, PromptTemplate, prompt_as_text, render_prompt
from spae.fewshot.scoring import CHOICE_NORMALISATION, accuracy_summary, check_scoring, extract_answer, is_correct
from spae.hashing import stable_hash
from spae.llm.backends import LLMBackend


@dataclass
class EpisodeResult:
    key: str
    episode_id: str
    n_way: int
    shots: int
    repeats: int
    task_induction: bool
    scoring: str
    prompt: str
    generation: str
    answer: str
    target: str
    correct: bool
    classes: list[str]
    # constrained choice (not the paper's protocol): total log-probability of each class's answer text after
    # the prompt, the top class and whether it is the target; filled with scoring=rank_loglik or choice=True
    scores: dict[str, float] = field(default_factory=dict)
    choice: str = ""
    choice_correct: bool | None = None
    choice_unavailable: str = ""  # why the backend could not rank the classes (then scores stay empty)

    @classmethod
    def from_json(cls, record: dict) -> "EpisodeResult":
        return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})


def episode_key(episode: Episode, template: PromptTemplate, scoring: str, choice: bool = False) -> str:
    """Identity of one evaluation: the episode's content, the template, the scoring rule and whether the
    constrained choice is recorded too."""
    content = {"support": episode.support, "query": episode.query, "classes": episode.classes,
               "induction": episode.task_induction, "template": asdict(template), "scoring": scoring}
    if choice:
        content["choice"] = CHOICE_NORMALISATION
    return f"{episode.episode_id}-{'ti' if episode.task_induction else 'noti'}-{stable_hash(content)}"


def evaluate_episodes(backend: LLMBackend, episodes: Sequence[Episode],
                      render_image: Callable[[int], ImageRendering], template: PromptTemplate,
                      scoring: str = "exact", jsonl_path: str | Path | None = None, resume: bool = True,
                      chunk_size: int = 32, progress: Callable[[int, int], None] | None = None,
                      choice: bool = False) -> list[EpisodeResult]:
    """Evaluate episodes; results in episode order. `progress(done, total)` is called after each chunk.
    choice=True also records the constrained choice beside the generated answer (the same prompt run once on
    backends that support it), or why the backend cannot compute it."""
    check_scoring(scoring)
    keys = [episode_key(e, template, scoring, choice) for e in episodes]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate episodes (same id and content): give each episode a distinct episode_id")
    done: dict[str, EpisodeResult] = {}
    if jsonl_path is not None:
        jsonl_path = Path(jsonl_path)
        done = _load_finished(jsonl_path) if resume else {}
        if not resume and jsonl_path.exists():
            jsonl_path.unlink()
    todo = [i for i, k in enumerate(keys) if k not in done]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start: start + chunk_size]
        results = _run_chunk(backend, [episodes[i] for i in chunk], [keys[i] for i in chunk], render_image,
                             template, scoring, choice)
        for result in results:
            done[result.key] = result
            if jsonl_path is not None:
                _append(jsonl_path, result)
        if progress is not None:
            progress(len(episodes) - len(todo) + start + len(chunk), len(episodes))
    return [done[k] for k in keys]


def summarize(results: Sequence[EpisodeResult]) -> dict:
    """The headline: accuracy of the answers as scored by the run's scoring rule, with its Wilson interval."""
    return accuracy_summary([r.correct for r in results])


def summarize_choice(results: Sequence[EpisodeResult]) -> dict:
    """Constrained-choice accuracy with its Wilson interval, or {"unavailable": reason} when any episode
    lacks it (never a summary of a subset)."""
    reasons = sorted({r.choice_unavailable or "constrained choice not recorded" for r in results
                      if r.choice_correct is None})
    if reasons:
        return {"unavailable": "; ".join(reasons), "n": 0}
    return accuracy_summary([bool(r.choice_correct) for r in results])


def evaluate_cells(backend: LLMBackend, labels: Sequence, cells: Sequence, render_image: Callable[[int], ImageRendering],
                   template: PromptTemplate, n_episodes: int, seed: int, out_dir: str | Path | None = None,
                   scoring: str = "exact", label_names=None, indices: Sequence[int] | None = None,
                   resume: bool = True) -> dict[str, dict]:
    """Evaluate a grid of cells (objects with n_way, shots, repeats, task_induction and key, e.g.
    spae.fewshot.table.Cell); one JSONL per cell under out_dir. Returns {cell key: accuracy summary}."""
    summaries = {}
    for cell in cells:
        episodes = sample_episodes(labels, cell.n_way, cell.shots, n_episodes, seed=seed, repeats=cell.repeats,
                                   task_induction=cell.task_induction, label_names=label_names, indices=indices)
        path = None if out_dir is None else Path(out_dir) / f"{cell.key}-{template.name}-{scoring}.jsonl"
        results = evaluate_episodes(backend, episodes, render_image, template, scoring, path, resume=resume)
        summaries[cell.key] = summarize(results)
    return summaries


def _run_chunk(backend: LLMBackend, episodes: list[Episode], keys: list[str],
               render_image: Callable[[int], ImageRendering], template: PromptTemplate,
               scoring: str, choice: bool = False) -> list[EpisodeResult]:
    prompts = [render_prompt(e, template, render_image) for e in episodes]
    candidates = [[template.answer_text(c) for c in e.classes] for e in episodes]
    unavailable = ""
    if scoring == "rank_loglik" or choice:
        unavailable = backend.choice_scoring_unavailable(any(not isinstance(p, str) for p in prompts)) or ""
    if scoring == "rank_loglik":
        if unavailable:
            raise ValueError(f"scoring=rank_loglik needs log-likelihoods: {unavailable}")
        raw = backend.score_choices(prompts, candidates)
        generations = [_top_class(e.classes, r) for e, r in zip(episodes, raw)]
    elif choice and not unavailable:
        generations, raw = backend.generate_with_choices(prompts, candidates, template.max_new_tokens, template.stop)
    else:
        generations, raw = generate_answers(backend, prompts, template.max_new_tokens, template.stop), None
    results = []
    for i, (key, episode, prompt, generation) in enumerate(zip(keys, episodes, prompts, generations)):
        answer = generation if scoring == "rank_loglik" else extract_answer(generation, template.stop)
        scores = {} if raw is None else dict(zip(episode.classes, raw[i]))
        top = _top_class(episode.classes, raw[i]) if raw is not None else ""
        results.append(EpisodeResult(
            key=key, episode_id=episode.episode_id, n_way=episode.n_way, shots=episode.shots,
            repeats=episode.repeats, task_induction=episode.task_induction, scoring=scoring,
            prompt=prompt_as_text(prompt), generation=generation or "", answer=answer, target=episode.answer,
            correct=is_correct(answer, episode.answer, scoring), classes=list(episode.classes), scores=scores,
            choice=top, choice_correct=None if raw is None else is_correct(top, episode.answer, "exact"),
            choice_unavailable=unavailable))
    return results


def _top_class(classes: Sequence[str], scores: Sequence[float]) -> str:
    """The class with the highest score; ties go to the first in episode order (a random order)."""
    return classes[max(range(len(classes)), key=lambda k: scores[k])]


def generate_answers(backend: LLMBackend, prompts: list, max_new_tokens: int, stop: list[str]) -> list[str]:
    """Greedy generations for text prompts, or for prompts holding input-embedding segments (prefix methods)."""
    if all(isinstance(p, str) for p in prompts):
        return backend.generate(prompts, max_new_tokens, stop)
    segments = [p if isinstance(p, list) else [p] for p in prompts]
    return backend.generate_from_embeds(segments, max_new_tokens, stop)


def append_jsonl_record(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to disk at once (an interrupted run loses at most this line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_records(path: Path) -> list[dict]:
    """The complete records of a JSONL file; a torn last line (interrupted write) is cut off the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]


def _append(path: Path, result: EpisodeResult) -> None:
    append_jsonl_record(path, asdict(result))


def _load_finished(path: Path) -> dict[str, EpisodeResult]:
    """Finished episodes from a JSONL file; a torn last line (interrupted write) is cut off the file."""
    done = {}
    for record in read_jsonl_records(path):
        result = EpisodeResult.from_json(record)
        done[result.key] = result
    return done


__all__ = ["EpisodeResult", "append_jsonl_record", "evaluate_cells", "evaluate_episodes", "episode_key",
           "generate_answers", "read_jsonl_records", "summarize", "summarize_choice"]
