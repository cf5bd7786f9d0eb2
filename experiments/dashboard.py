"""A W&B workspace for one group of runs (a sweep's logger.group, or a bench run's id), built with wandb-workspaces:

    python -m experiments.dashboard ablation-full                    # build and check the spec (offline)
    python -m experiments.dashboard ablation-full --out spec.json    # ... and write it as JSON
    python -m experiments.dashboard ablation-full --save             # create it in W&B (needs W&B online)

Sections: training curves (train/* and clip/* against trainer/global_step, one line per trained model's run),
reconstruction PSNR and SSIM per pyramid layer, few-shot accuracy per cell and method (the paper's exact
match and the constrained choice), and the images (pyramid reconstructions with words during training,
the evaluation grids). The metric names come from the group's results.json files under --runs-dir, exactly
as the bench runs logged them (spae.logging_utils: `results/<stage>/...`), so every panel has data.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

# Curves the training stages log (spae.tokenizer, spae.frozen_baseline, spae.clip.train_embedded); a run
# shows the ones its model has. test_wandb_tracking checks the tokenizer's against a real training.
TRAINING_CURVES = ("train/loss", "train/rec", "train/rec_prefix", "train/semantic", "train/gan_g", "train/disc/loss",
                   "train/lr", "train/caption_loss", "clip/loss", "clip/batch_acc")
STEP_AXIS = "trainer/global_step"
RECON_METRICS = (("psnr", "PSNR (dB, mean per image)"), ("ssim", "SSIM"))
FEWSHOT_METRICS = (("accuracy", "accuracy (exact match, the paper's protocol)"),
                   ("constrained_choice/accuracy", "constrained-choice accuracy (not the paper's protocol)"))
EXIT_NEEDS_ONLINE = 2


def group_results(runs_dir: Path, group: str) -> list[dict]:
    """results.json of every bench run of the group under runs_dir (<bench>/<run id>/results.json)."""
    from spae.logging_utils import wandb_group

    found = []
    for path in sorted(Path(runs_dir).glob("*/*/results.json")):
        results = json.loads(path.read_text())
        if wandb_group(results.get("config") or {}, results.get("run_id", path.parent.name)) == group:
            found.append(results)
    return found


def layers_of(metrics: dict, name: str) -> list[int]:
    return sorted(int(m.group(1)) for key in metrics if (m := re.fullmatch(rf"{name}_l(\d+)", key)))


def recon_panels(results: Iterable[dict]) -> list[Any]:
    """Per evaluation set and metric, one bar chart: a bar per layer for every run."""
    import wandb_workspaces.reports.v2 as wr

    sets: dict[str, set[int]] = {}
    for result in results:
        for name, metrics in ((result.get("metrics") or {}).get("recon_eval") or {}).items():
            sets.setdefault(name, set()).update(layers_of(metrics, "psnr"))
    return [wr.BarPlot(title=f"{label} per layer: {name}", orientation="v",
                       metrics=[f"results/recon_eval/{name}/{metric}_l{layer}" for layer in sorted(layers)])
            for name, layers in sorted(sets.items()) for metric, label in RECON_METRICS]


def fewshot_panels(results: Iterable[dict]) -> list[Any]:
    """Per cell and metric, one bar chart with a bar per compared method (stable id) for every run."""
    import wandb_workspaces.reports.v2 as wr

    cells: dict[str, dict[str, set[str]]] = {}
    for result in results:
        for method, per_cell in ((result.get("metrics") or {}).get("fewshot_eval") or {}).items():
            for cell, values in per_cell.items():
                for metric, _ in FEWSHOT_METRICS:
                    if _lookup(values, metric) is not None:
                        cells.setdefault(cell, {}).setdefault(metric, set()).add(method)
    return [wr.BarPlot(title=f"{cell}: {label}", orientation="v",
                       metrics=[f"results/fewshot_eval/{m}/{cell}/{metric}" for m in sorted(by_metric[metric])])
            for cell, by_metric in sorted(cells.items(), key=lambda kv: (kv[0] == "average", kv[0]))
            for metric, label in FEWSHOT_METRICS if metric in by_metric]


def image_panels(results: Iterable[dict]) -> list[Any]:
    """The training runs' pyramid images (images/layer<l>, spae.tracking.callbacks) and the evaluation grids."""
    import wandb_workspaces.reports.v2 as wr

    results = list(results)
    layers = max([len(((r.get("config") or {}).get("model") or {}).get("layers") or []) for r in results] + [1])
    roles = sorted({name.split("/")[0] for r in results for name in
                    ((r.get("metrics") or {}).get("recon_eval") or {})})
    keys = ["images/original"] + [f"images/layer{layer}" for layer in range(1, layers + 1)]
    return ([wr.MediaBrowser(title=f"during training: {key.split('/')[1]}", media_keys=[key], num_columns=4)
             for key in keys]
            + [wr.MediaBrowser(title=f"evaluation: reconstructions ({role})", media_keys=[f"recon/{role}"],
                               num_columns=1) for role in roles])


def training_panels() -> list[Any]:
    import wandb_workspaces.reports.v2 as wr

    return [wr.LinePlot(title=key, x=STEP_AXIS, y=[key], title_x="optimizer steps (tokenizers: 2 per batch)")
            for key in TRAINING_CURVES]


def build_workspace(group: str, results: list[dict], entity: str, project: str) -> Any:
    """The workspace for the group's runs (not saved): a section per concern the group has data for (a
    reconstruction-only sweep has no few-shot section), runs filtered to the group."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    sections = [("Training curves (one run per trained model)", training_panels()),
                ("Reconstruction: PSNR and SSIM per layer", recon_panels(results)),
                ("Few-shot accuracy per cell and method", fewshot_panels(results)),
                ("Images: pyramid layers with their words, evaluation grids", image_panels(results))]
    return ws.Workspace(entity=entity, project=project, name=f"spae: {group}",
                        sections=[ws.Section(name=name, panels=panels, is_open=True) for name, panels in sections
                                  if panels],
                        settings=ws.WorkspaceSettings(x_axis=STEP_AXIS),
                        runset_settings=ws.RunsetSettings(filters=[expr.Metric("Group") == group]))


def spec_of(workspace: Any) -> dict:
    """The workspace as W&B would receive it (the saved view's JSON), built offline."""
    return workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def describe(workspace: Any) -> str:
    lines = [f"workspace {workspace.name!r} for {workspace.entity}/{workspace.project}:"]
    lines += [f"  {section.name}: {len(section.panels)} panels" for section in workspace.sections]
    return "\n".join(lines)


def _lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def wandb_offline() -> bool:
    return os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = group_results(args.runs_dir, args.group)
    if not results:
        print(f"error: no results.json of group {args.group!r} under {args.runs_dir}/<bench>/<run id>/; give the "
              "sweep's logger.group (or a bench run id) and the runs folder (--runs-dir, paths.runs_dir)",
              file=sys.stderr)
        return EXIT_NEEDS_ONLINE
    logger = (results[0].get("config") or {}).get("logger") or {}
    entity, project = args.entity or logger.get("entity"), args.project or logger.get("project") or "spae"
    workspace = build_workspace(args.group, results, entity or "<entity>", project)
    print(describe(workspace))
    if args.out:
        args.out.write_text(json.dumps(spec_of(workspace), indent=1))
        print(f"spec written to {args.out}")
    if not args.save:
        return 0
    return save(workspace, entity)


def save(workspace: Any, entity: str | None) -> int:
    """Create the workspace in W&B: online only, with a clear message (exit 2) where that cannot be."""
    if wandb_offline():
        print("error: creating the workspace needs W&B online, and WANDB_MODE is offline: unset WANDB_MODE, run "
              "`wandb login` (or set WANDB_API_KEY), upload the offline runs with "
              "`wandb sync <run folder>/wandb/offline-run-*`, then rerun with --save. The spec above was built and "
              "checked offline.", file=sys.stderr)
        return EXIT_NEEDS_ONLINE
    import wandb

    try:
        workspace.entity = entity or wandb.Api().default_entity
        workspace.save()
    except Exception as err:  # no key, no network, unknown entity/project: say which and how to fix it
        print(f"error: W&B refused or could not be reached ({type(err).__name__}: {err}); check `wandb login`, "
              "the network and --entity/--project", file=sys.stderr)
        return EXIT_NEEDS_ONLINE
    print(f"workspace saved: {workspace.url}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("group", help="W&B group: a sweep's logger.group, or a bench run id (runs without a group)")
    parser.add_argument("--runs-dir", type=Path, default=Path(os.environ.get("SPAE_RUNS_DIR", "outputs")),
                        help="the runs folder (paths.runs_dir; default $SPAE_RUNS_DIR or outputs)")
    parser.add_argument("--entity", default=None, help="W&B entity (default: logger.entity, else your default)")
    parser.add_argument("--project", default=None, help="W&B project (default: logger.project, else spae)")
    parser.add_argument("--out", type=Path, default=None, help="also write the spec as JSON here")
    parser.add_argument("--save", action="store_true", help="create the workspace in W&B (needs W&B online)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
