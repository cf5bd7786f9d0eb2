"""In-context captioning and VQA with a frozen LLM: items, prompts, answering with resume, and metrics."""
