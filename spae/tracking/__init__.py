"""Experiment tracking beyond the run-level logger (spae.logging_utils.RunLogger): one W&B run per trained
model (spae.tracking.runs), its checkpoints as artifacts, and the pyramid images drawn during training
(spae.tracking.pyramid_images, spae.tracking.callbacks)."""
