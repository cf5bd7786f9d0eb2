"""A tiny pipeline stage for the concurrency tests: it counts its executions in a file and sleeps, so two
processes that start it at once overlap. Run as `python _reliability_helpers.py CACHE RUN COUNTER KNOB`."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.pipeline import STAGES, run_stages, stage  # noqa: E402

SLEEP_S = 1.0


def _slow_counting(ctx):
    counter = Path(ctx.cfg["rel"]["counter"])
    with open(counter, "a") as handle:  # O_APPEND: one line per execution, from any process
        handle.write(f"{os.getpid()} {ctx.out_dir}\n")
    time.sleep(SLEEP_S)
    (ctx.out_dir / "artefact.txt").write_text(f"knob={ctx.cfg['rel']['knob']}")
    return {"value": ctx.cfg["rel"]["knob"] * 10, "pid": os.getpid()}


if "_rel_slow" not in STAGES:
    stage("_rel_slow", config_keys=("rel.knob",))(_slow_counting)


def main(cache: str, run: str, counter: str, knob: int) -> None:
    cfg = {"rel": {"knob": knob, "counter": counter}}
    result = run_stages(["_rel_slow"], cfg, Path(cache), Path(run))["_rel_slow"]
    print(json.dumps({"dir": str(result.dir), "summary": result.summary, "cached": result.cached}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
