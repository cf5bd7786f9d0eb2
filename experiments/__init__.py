"""The experiment layer: the Hydra entry point (run.py), the stage DAG (pipeline.py) and the stages."""
import os

# Before torch (and its OpenMP runtime) loads: idle OpenMP threads must sleep, not spin. On a shared or
# oversubscribed CPU, spinning made a training step 7x slower (22.3 s vs 3.1 s, measured); harmless
# on an idle machine. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
