"""In-context few-shot classification: episodes (Frozen's protocol), prompts, scoring, and the engine."""
from spae.fewshot.engine import EpisodeResult, evaluate_cells, evaluate_episodes, summarize
from spae.fewshot.episodes import Episode, sample_episodes
from spae.fewshot.prompts import PromptTemplate, render_prompt
from spae.fewshot.scoring import accuracy_summary, extract_answer, is_correct, wilson_interval

__all__ = ["Episode", "EpisodeResult", "PromptTemplate", "accuracy_summary", "evaluate_cells", "evaluate_episodes",
           "extract_answer", "is_correct", "render_prompt", "sample_episodes", "summarize", "wilson_interval"]
