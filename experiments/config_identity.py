"""What a stage key (and a run folder's hash) sees of a config value: only what differs from the defaults.

Keys hash config values. Hashed as composed, a new option added to the config at a default that keeps the old
behaviour would change every key that reads its section, and the next run would recompute everything. So a
value is reduced before it is hashed:
- inside a section with a typed schema (spae.config: `model`, `trainer`, a tokenizer `method`, and the tokenizer
  methods a bench compares, `bench.methods.*`), a key whose value equals the schema's default is left out, and
  so is a nested section left at its defaults: the library fills in those very defaults
  (ConfigSection.from_dict), so a preset that states a default and one that omits it build the same thing and
  share their keys;
- Lightning arguments passed through `trainer.*` are typed by Lightning's Trainer signature: one at its
  default is left out too;
- anywhere else (and for keys a schema does not know), a key whose value is null is left out: a missing key and a null one mean the same to every consumer (read
  them with `.get(key)`, never `.get(key, something_else)`), so a new key whose default is null joins no key.
Equal means the same JSON: 1 and 1.0 differ (a consumer could tell them apart; a needless recompute is safe,
a wrong reuse is not).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterable, Mapping

from spae.config import ConfigSection, MethodConfig, ModelConfig, TrainerConfig

_OMIT = object()  # the reduced value contributes nothing
_UNTYPED = object()  # no schema covers this path


def _method_schema(value: Any) -> "ConfigSection | None":
    """Tokenizer methods (SPAE, LQAE) have a schema; Frozen's prefix settings have none."""
    is_tokenizer = isinstance(value, Mapping) and value.get("kind", MethodConfig().kind) == "tokenizer"
    return MethodConfig() if is_tokenizer else None


# config paths ("*" = any key) whose value has a typed schema: value -> the schema's defaults (None: untyped)
SCHEMA_ROOTS: dict[tuple[str, ...], Callable[[Any], "ConfigSection | None"]] = {
    ("model",): lambda value: ModelConfig(),
    ("trainer",): lambda value: TrainerConfig(),
    ("method",): _method_schema,
    ("bench", "methods", "*"): _method_schema,
}


def key_values(cfg: Mapping, paths: Iterable[str]) -> dict[str, Any]:
    """{dotted path: reduced value} for the paths a stage declares; a path that is missing, null, or (inside a
    schema) at its default is left out."""
    out = {}
    for path in paths:
        value = reduced(cfg, path)
        if value is not _OMIT:
            out[path] = value
    return out


def reduced_config(cfg: Mapping) -> dict[str, Any]:
    """The whole config as keys see it (for hashes of a whole run)."""
    return key_values(cfg, [str(k) for k in cfg])


def reduced_untyped(value: Any) -> Any:
    """A value with no schema (e.g. a stage's derived values): null keys of its mappings left out."""
    result = _reduce(value, [], _UNTYPED)
    return None if result is _OMIT else result


def reduced(cfg: Mapping, path: str) -> Any:
    parts = path.split(".")
    node: Any = cfg
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return _OMIT  # missing: its default (typed) or null (untyped); either way nothing
        node = node[part]
    return _reduce(node, parts, _default_at(cfg, parts))


def _default_at(cfg: Mapping, parts: list[str]) -> Any:
    """The schema's default at a path (a ConfigSection for a section), or _UNTYPED."""
    for root, schema in SCHEMA_ROOTS.items():
        if not _under(parts, root):
            continue
        node: Any = cfg
        for part in parts[:len(root)]:
            node = node[part]
        default: Any = schema(node)
        if default is None:
            return _UNTYPED
        for part in parts[len(root):]:
            default = _child_default(default, part)
        return default
    return _UNTYPED


def _under(parts: list[str], root: tuple[str, ...]) -> bool:
    """The path is the schema root or lies inside it."""
    return len(parts) >= len(root) and all(r in ("*", p) for r, p in zip(root, parts))


def _is_root(parts: list[str]) -> bool:
    return any(len(parts) == len(root) and _under(parts, root) for root in SCHEMA_ROOTS)


def _child_default(section: Any, key: str) -> Any:
    """The default of `key` inside a schema section; a trainer's other keys pass through to Lightning's Trainer,
    whose signature gives theirs. _UNTYPED where nothing says."""
    if not isinstance(section, ConfigSection):
        return _UNTYPED
    if key in {f.name for f in dataclasses.fields(section)}:
        return getattr(section, key)
    if isinstance(section, TrainerConfig):
        from spae.training import lightning_trainer_defaults

        return lightning_trainer_defaults().get(key, _UNTYPED)
    return _UNTYPED


def _reduce(value: Any, parts: list[str], default: Any) -> Any:
    if isinstance(default, ConfigSection):
        if value is None:
            return _OMIT  # a null section takes its defaults
        if not isinstance(value, Mapping):
            return value  # malformed: kept, the consumer names the error
        items = _reduce_items(value, parts, lambda k: _child_default(default, k))
        # a nested section at its defaults is as good as absent; a schema root stays (its presence can matter)
        return _OMIT if not items and not _is_root(parts) else items
    if default is not _UNTYPED:
        return _OMIT if _same(value, default) else value
    if value is None:
        return _OMIT
    if isinstance(value, Mapping):
        return _reduce_items(value, parts, lambda k: _root_schema(parts + [str(k)], value[k]))
    if isinstance(value, (list, tuple)):
        return [None if item is None else _reduce(item, parts, _UNTYPED) for item in value]
    return value


def _reduce_items(value: Mapping, parts: list[str], default_of: Callable[[str], Any]) -> dict:
    out = {}
    for key, item in value.items():
        result = _reduce(item, parts + [str(key)], default_of(str(key)))
        if result is not _OMIT:
            out[key] = result
    return out


def _root_schema(parts: list[str], value: Any) -> Any:
    """The schema's defaults when `parts` is exactly a schema root (e.g. bench.methods.spae), else _UNTYPED."""
    for root, schema in SCHEMA_ROOTS.items():
        if len(parts) == len(root) and _under(parts, root):
            section = schema(value)
            return _UNTYPED if section is None else section
    return _UNTYPED


def _same(value: Any, default: Any) -> bool:
    def dump(x):
        return json.dumps(x.to_dict() if isinstance(x, ConfigSection) else x, sort_keys=True, default=str)

    return dump(value) == dump(default)
