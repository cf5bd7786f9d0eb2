"""The one entry point: python -m experiments.run +bench=<name> [overrides].

Composes the config with Hydra, derives the run's identity from it, runs (or reuses) the bench's stages
and their dependencies, and writes results.json + results.md into the run folder. The last line printed
is the path of results.json.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.config_identity import reduced_config
from experiments.pipeline import run_stages
from spae.console import configure_console
from spae.errors import UserError
from spae.hashing import stable_hash
from spae.results import build_results, git_sha, method_label, write_results

log = logging.getLogger("experiments.run")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Config parts that change where things go or how they are shown, not what is computed.
NON_IDENTITY_KEYS = ("paths", "logger", "force", "progress")
DATA_STAGES = ("pretrain_data", "eval_data")  # their metrics go into every results.json


class ConfigError(UserError, ValueError):
    """A config the user composed cannot run; the message says what to change."""


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def config_hash(cfg: dict) -> str:
    """As the stage keys see the config (experiments.config_identity): a key added at its default keeps the folder."""
    return stable_hash(reduced_config({k: v for k, v in cfg.items() if k not in NON_IDENTITY_KEYS}))


def run_id(cfg: dict) -> str:
    """Deterministic, readable, collision-free: same config -> same folder; any change -> another."""
    from spae.io import safe_name

    names = {"bench": cfg["bench"]["name"], "method": method_label(cfg), "data": cfg["data"]["name"],
             "llm": cfg["llm"]["name"]}
    parts = [safe_name(value, f"{group}.name") for group, value in names.items()]
    return "-".join(parts) + "-" + config_hash(cfg)


def check_no_secrets(cfg: dict) -> None:
    """API keys come only from the environment: a config holding one is refused before anything runs
    (it would otherwise reach results.json, the stage markers and W&B)."""
    from spae.logging_utils import secrets_in_config

    found = secrets_in_config(cfg)
    if found:
        raise ConfigError("the config holds secrets at " + ", ".join(found) + ". Put secrets in environment "
                          "variables and name the variable in the config (e.g. llm.api_key_env=OPENAI_API_KEY), "
                          "never the value.")


def tokenizer_methods(cfg: dict) -> dict[str, dict]:
    """{config path: spec} of every tokenizer method the run may train: `method` and `bench.methods.*`."""
    specs = {"method": cfg.get("method")}
    specs.update({f"bench.methods.{name}": spec for name, spec in ((cfg.get("bench") or {}).get("methods") or {}).items()})
    return {path: spec for path, spec in specs.items() if isinstance(spec, dict) and spec.get("kind") == "tokenizer"}


def check_pyramid_config(cfg: dict) -> None:
    """The semantic pyramid's settings, checked before any stage runs (not after an hour of data and CLIP
    preparation), with messages that name the keys to set (model.layers, model.latent_size,
    <method>.semantic.thresholds)."""
    from spae.pyramid import Pyramid, check_thresholds

    methods = tokenizer_methods(cfg)
    model = cfg.get("model") or {}
    if not methods or not model:
        return
    layered = any(not spec.get("single_layer", False) for spec in methods.values())
    pyramid = Pyramid(model.get("layers") if layered else [model.get("latent_size")], model.get("latent_size"),
                      sides_key="model.layers", latent_key="model.latent_size")
    for path, spec in methods.items():
        if spec.get("semantic_loss") and not spec.get("single_layer", False):
            check_thresholds((spec.get("semantic") or {}).get("thresholds"), pyramid.num_layers,
                             key=f"{path}.semantic.thresholds")


def folder_names(cfg: dict) -> dict[str, object]:
    """{config path: value} of every config value the stages use as a file or folder name."""
    bench, data = cfg.get("bench") or {}, cfg.get("data") or {}
    names: dict[str, object] = {f"bench.stages[{i}]": s for i, s in enumerate(bench.get("stages") or [])}
    names.update({f"bench.methods.{key} (key)": key for key in bench.get("methods") or {}})
    for i, entry in enumerate(bench.get("compare") or []):
        names[f"bench.compare[{i}].method"] = entry.get("method") if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and entry.get("model") is not None:  # a variant model names the method's files
            names[f"bench.compare[{i}].model"] = entry["model"]
    names.update({f"bench.recon.roles[{i}]": r for i, r in enumerate((bench.get("recon") or {}).get("roles") or [])})
    if isinstance(bench.get("prompt"), dict):
        names["bench.prompt.name"] = bench["prompt"].get("name")
    for role, spec in data.items():  # data.<role>: one dataset spec, or (pretrain) a dict of specs
        if not isinstance(spec, dict):
            continue
        specs = {f"data.{role}": spec} if "name" in spec else {f"data.{role}.{k}": v for k, v in spec.items()
                                                                  if isinstance(v, dict)}
        if not specs:
            continue
        names[f"data.{role} (key)"] = role
        if "name" not in spec:  # e.g. data.pretrain.<key>: the key names the prepared dataset's folder
            names.update({f"data.{role}.{k} (key)": k for k, v in spec.items() if isinstance(v, dict)})
        names.update({f"{path}.name": v.get("name") for path, v in specs.items() if "name" in v})
    return {path: value for path, value in names.items() if value is not None}


def check_folder_names(cfg: dict) -> None:
    """Paths from configs never escape the run and cache folders: a name with '/', '\\' or '..' is refused
    before anything is written (the stages check again where they build paths)."""
    from spae.io import safe_name

    for path, value in folder_names(cfg).items():
        safe_name(value, path)


def set_offline_env(offline: bool) -> None:
    """In offline mode no library may try the network (HF hub, datasets, W&B)."""
    if offline:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ[var] = "1"
        os.environ.setdefault("WANDB_MODE", "offline")


def check_bench(cfg: DictConfig) -> None:
    if "bench" not in cfg or cfg.bench is None:
        raise ConfigError(
            "No benchmark selected. Add +bench=<name> to the command, e.g. "
            "`python -m experiments.run +bench=mini_imagenet`. Valid names: "
            + ", ".join(available("bench")) + "."
        )


def add_file_logging(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def hydra_overrides() -> list[str]:
    """The overrides Hydra composed this job from (in a sweep: this job's own values), [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def record_invocation(run_dir: Path) -> dict:
    """Write the exact command line and the job's overrides into the run folder (command.json, and a
    command.sh to rerun it), so a result can always be traced to the command that produced it. Secrets
    never get here: check_no_secrets refuses configs holding one before this runs."""
    from spae.io import write_json_atomic

    invocation = {"argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
                  "overrides": hydra_overrides(), "cwd": os.getcwd()}
    write_json_atomic(run_dir / "command.json", invocation)
    rerun = "python -m experiments.run " + " ".join(shlex.quote(o) for o in invocation["overrides"])
    (run_dir / "command.sh").write_text(f"# rerun this job (from {invocation['cwd']})\n{rerun}\n")
    return invocation


def execute(cfg: DictConfig, substitutes: dict | None = None) -> Path:
    """Run a composed config; returns the path of results.json. Usable without the CLI (tests, which may pass
    `substitutes`: node or stage name -> a function run instead of that stage, see experiments.pipeline)."""
    check_bench(cfg)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    for key in ("root_dir", "cache_dir", "runs_dir"):
        container["paths"][key] = str(Path(container["paths"][key]).expanduser().resolve())
    check_no_secrets(container)
    check_folder_names(container)
    check_pyramid_config(container)
    from spae.data.fairness import check_class_disjoint

    check_class_disjoint(container.get("data") or {})  # the open world's promise, before anything is built
    set_offline_env(bool(container.get("offline", True)))
    configure_console(container.get("progress"))  # bars on a terminal only (SPAE_PROGRESS / progress override)

    import experiments.stages  # noqa: F401  (registers every stage)
    from spae.logging_utils import RunLogger, redact

    identity = run_id(container)
    run_dir = Path(container["paths"]["runs_dir"]) / container["bench"]["name"] / identity
    add_file_logging(run_dir)
    invocation = record_invocation(run_dir)
    log.info("run %s -> %s", identity, run_dir)

    start = time.perf_counter()
    code_version = git_sha()
    with RunLogger.from_config(container, run_dir, identity) as logger:
        targets = list(container["bench"]["stages"])
        results = run_stages(targets, container, Path(container["paths"]["cache_dir"]), run_dir,
                             logger=logger, force=tuple(container.get("force") or ()), substitutes=substitutes)
        metrics, markdown = {}, []
        for name in targets:
            summary = results[name].summary
            metrics[name] = summary.get("metrics", {})
            if summary.get("markdown"):
                markdown.append(summary["markdown"])
        for name in DATA_STAGES:  # what every bench read (rows, classes, images per class), whatever its targets
            if name in results and name not in metrics:
                metrics[name] = results[name].summary.get("metrics", {})
        # pretraining images seen per trained method (the benches that compare methods report it)
        training = {n: results[n].summary["training"] for n in targets if "training" in results[n].summary}
        # what each compared method's tokens carry without an LLM (fewshot_eval), beside the per-method metrics
        content = {n: results[n].summary["token_content"] for n in targets if "token_content" in results[n].summary}
        labels = method_labels(results[n].summary for n in targets)
        stage_seconds = {n: round(r.seconds, 3) for n, r in results.items()}
        cached = sorted(n for n, r in results.items() if r.cached)
        payload = build_results(redact(container), config_hash(container), metrics, stage_seconds, code_version,
                                extra={"run_id": identity, "stages_reused": cached, "invocation": invocation,
                                       **({"training": training} if training else {}),
                                       **({"token_content": content} if content else {}),
                                       **({"method_labels": labels} if labels else {}),
                                       "wall_seconds": round(time.perf_counter() - start, 3)})
        path = write_results(run_dir, payload, "\n\n".join(markdown) or "(no metrics)")
        logger.log_results(payload)
    return path


def method_labels(summaries) -> dict[str, str]:
    """{stable id: display name} of the methods the benches compared (their metrics are keyed by the id)."""
    return {method_id: info["label"] for summary in summaries for method_id, info in (summary.get("methods") or {}).items()
            if isinstance(info, dict) and "label" in info}


# Hydra's sweep functions (`method=choice(spae,lqae)`, `glob(*)`, ...): their arguments are option names
# only for choice/tag-less lists; glob patterns and ranges are expanded by Hydra itself.
SWEEP_FUNCTION = re.compile(r"^(?P<fn>[a-z_]+)\((?P<args>.*)\)$")
NAME_LISTING_FUNCTIONS = ("choice", "shuffle", "sort")


def group_choices(value: str) -> list[str]:
    """The option names a group override asks for: `a`, `a,b`, `[a,b]` or `choice(a,b)`; none for globs and
    other sweep functions, which Hydra expands (and checks) against the config folder itself."""
    match = SWEEP_FUNCTION.match(value.strip())
    if match:
        if match["fn"] not in NAME_LISTING_FUNCTIONS:
            return []
        value = match["args"]
    names = [part.strip().strip("'\"") for part in value.strip("[]").split(",")]
    return [name for name in names if name and name != "null" and "=" not in name and "(" not in name]


def check_group_choices(argv: list[str]) -> None:
    """Fail in one clear paragraph on an unknown group option (bench, data, llm, ...), before Hydra
    prints its longer search-path report."""
    for arg in argv:
        prefix = arg[: len(arg) - len(arg.lstrip("+~"))]
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or "." in key or not (CONF_DIR / key).is_dir() or key.startswith("hydra"):
            continue
        valid = available(key)
        for choice in group_choices(value):
            if choice not in valid:
                raise ConfigError(
                    f"Unknown {key} {choice!r}. Valid {key} names: {', '.join(valid)}. Choose one with "
                    f"{prefix}{key}=<name>, or add conf/{key}/{choice}.yaml to define a new one."
                )


def as_user_error(err: BaseException) -> UserError | None:
    """The error as the user should see it, or None when it is a bug (then the traceback is shown)."""
    return err if isinstance(err, UserError) else None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        path = execute(cfg)
    except Exception as err:  # noqa: BLE001 - only user errors are caught; anything else is re-raised as is
        user_error = as_user_error(err)
        if user_error is None:
            raise
        # bad input or config: the message names the problem and the fix
        log.debug("user error", exc_info=True)
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
    print(path)


if __name__ == "__main__":
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
