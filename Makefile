# The two set-up commands of the README. Each installs whatever is missing first (scripts/setup.sh).
.PHONY: setup run test test-all

setup:
	@bash scripts/setup.sh

# The main job on the embedded offline default (Fashion-MNIST stand-in, embedded CLIP, Gemma 3 270M).
run: setup
	.venv/bin/python -m experiments.run +bench=mini_imagenet

# The fast test suite (offline, CPU). test-all adds the slow tests (real embedded LLMs, full training).
test: setup
	.venv/bin/python -m pytest -m "not slow" -q

test-all: setup
	.venv/bin/python -m pytest -q
