"""Training configs: a dataclass per stage, filled from a YAML file plus `key=value` overrides.

    cfg = load_config(MyStageConfig, "configs/shapes-tiny/stage1.yaml", ["lr=3e-4", "decoder.depth=2"])

A config path that does not exist as a file is looked up among the configs shipped inside the package, so the
documented names (`configs/shapes-tiny/tokenizer-stage1.yaml`, or just `shapes-tiny/tokenizer-stage1`) work after a
plain `pip install`, from any folder.

Every stage config subclasses `TrainConfig` (the engine's settings: steps, batch, lr, schedule, checkpoints, ...)
and adds its own fields; a field may itself be a dataclass (YAML mapping, overridden with dotted keys). Values are
checked against the field types: an unknown key or a value of the wrong type is a one-line ValueError naming the
key and where it came from, never a silently ignored setting.

A field may be an older spelling of a key in a section: `codebook_size: int | None = field(default=None,
metadata={"alias": "model.codebook_size"})`. YAML keys and overrides of that name are read as the section's key, so
whichever comes later wins (an override beats the file, whatever the spelling); the field itself stays at its
default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

# The configs/ folder ships as package data (vqrae/configs/ once installed; the repository's configs/ in a checkout).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

_NULLS = {"null", "none", "~", ""}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclasses.dataclass
class TrainConfig:
    """The engine's settings, shared by every stage. Stage configs subclass this and add their own fields."""

    output_dir: str = "runs/default"  # checkpoints/, final/, metrics.jsonl, loss.png, config.yaml
    seed: int = 0
    max_steps: int = 100  # optimizer steps
    batch_size: int = 8  # per process and micro-batch; global batch = batch_size * grad_accum * processes
    grad_accum: int = 1
    lr: float = 1e-4  # base lr; a stage's parameter groups may set their own
    weight_decay: float = 0.0  # AdamW decay on >= 2-D weights; biases and norm scales never decay (param_groups)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    schedule: Literal["cosine", "constant"] = "cosine"  # both with linear warmup
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU (bf16 is ~20x slower there)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # cuDNN's attention backward (torch's default SDPA kernel on Hopper) returned NaN gradients in our bf16 tokenizer
    # stages on an H200 (64-token sequences; cf. pytorch#196678); false leaves attention to flash / mem-efficient.
    cudnn_attention: bool = False
    # null: plain PyTorch in one process. zero1|zero2|zero3|zero3_offload (train/ds_configs/) or a JSON file path:
    # DeepSpeed, launched with `deepspeed` or `torchrun` for several processes.
    deepspeed: str | None = None
    num_workers: int = 0  # DataLoader workers per process
    log_every: int = 10  # steps between metrics.jsonl lines (each the mean over those steps)
    eval_every: int = 0  # steps between Stage.evaluate calls (0: only at the end)
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    keep_last: int = 2  # checkpoints kept on disk
    # auto: continue from the latest checkpoint in output_dir if there is one; never: refuse to start if one
    # exists; or a checkpoint folder to start from (weights, optimizer, data position, RNG).
    resume: str = "auto"

    def __post_init__(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum", "log_every", "keep_last")
        non_negative = ("warmup_steps", "num_workers", "eval_every", "save_every", "grad_clip", "weight_decay")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"config key '{key}': must be > 0, got {getattr(self, key)}")
        for key in non_negative:
            if getattr(self, key) < 0:
                raise ValueError(f"config key '{key}': must be >= 0, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ValueError(f"config key 'lr': must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"config key 'min_lr_ratio': must be in [0, 1], got {self.min_lr_ratio}")
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"config key 'adam_betas': each must be in [0, 1), got {list(self.adam_betas)}")


# --------------------------------------------------------------------------------------------- loading


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from a YAML file (optional) and `key=value` overrides (dotted keys reach nested dataclasses)."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = resolve_config_path(path)
        data = read_config_file(path)
        source = str(path)
    values = _parse_mapping(cls, data, prefix="", source=source)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override '{item}' is not of the form key=value")
        _set_override(cls, values, key.strip(), raw, item)
    return _build(cls, values)


def read_config_file(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a mapping. `base: OTHER` (a path relative to this file, or a shipped config name) reads
    OTHER first and lays this file's keys over it (mappings merge key by key, everything else is replaced): a
    profile that changes two settings of another says only those two."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"config file {path}: expected a mapping of keys to values, got {type(loaded).__name__}")
    data = loaded or {}
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        msg = f"config file {path}: 'base' must name another config file, got {base!r}"
        raise ValueError(msg)  # noqa: TRY004 (config errors are ValueErrors: the CLI prints them as one line)
    sibling = path.parent / base
    base_path = sibling if sibling.is_file() else resolve_config_path(base)
    if base_path.resolve() in _seen or base_path.resolve() == path.resolve():
        raise ValueError(f"config file {path}: 'base: {base}' makes a cycle")
    return _merge(read_config_file(base_path, (*_seen, path.resolve())), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def packaged_configs() -> list[str]:
    """Names of the configs shipped with vqrae, as `group/name` (e.g. `shapes-tiny/tokenizer-stage1`)."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.glob("*/*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """A file that exists, else the shipped config of that name: `configs/G/N.yaml`, `G/N.yaml` or `G/N`."""
    path = Path(path)
    if path.is_file():
        return path
    name = path.as_posix().removeprefix("./").removeprefix("configs/")
    packaged = CONFIG_DIR / (name if name.endswith((".yaml", ".yml")) else name + ".yaml")
    if not path.is_absolute() and packaged.is_file():
        return packaged
    raise FileNotFoundError(f"config file not found: {path} (shipped configs: {', '.join(packaged_configs())})")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) that YAML and JSON can write and `load_config` can read back. Older spellings
    (alias fields) are left out: their values live in the section they name."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    aliases = {f.name for f in dataclasses.fields(cfg) if "alias" in f.metadata}
    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items() if k not in aliases}


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# ---------------------------------------------------------------------------------------------- internals


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _unknown(key: str, known: Sequence[str], where: str) -> ValueError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean '{key[: len(key) - len(leaf)]}{close[0]}'?)" if close else ""
    return ValueError(f"unknown config key '{key}' in {where}{hint}")


def _alias(cls: type, key: str) -> str | None:
    """The dotted key that field `key` of `cls` is an older spelling of, if it is one."""
    for f in dataclasses.fields(cls):
        if f.name == key:
            return f.metadata.get("alias")
    return None


def _parse_mapping(cls: type, data: dict, prefix: str, source: str, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Type-check a (possibly nested) YAML mapping against dataclass `cls`; nested dataclasses stay dicts."""
    fields = _fields(cls)
    out = {} if out is None else out
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise _unknown(full, list(fields), source)
        alias = _alias(cls, key)
        if alias is not None:  # an older spelling: read as the section's key
            head, _, rest = alias.partition(".")
            _parse_mapping(fields[head][1], {rest: value}, f"{prefix}{head}.", source, out.setdefault(head, {}))
            continue
        tp = fields[key][1]
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ValueError(f"config key '{full}' in {source}: expected a mapping, got {value!r}")
            _parse_mapping(tp, value, f"{full}.", source, out.setdefault(key, {}))
        else:
            out[key] = _coerce(value, tp, full, source, from_string=False)
    return out


def _set_override(cls: type, values: dict[str, Any], key: str, raw: str, item: str) -> None:
    head, _, rest = key.partition(".")
    alias = _alias(cls, head) if head in _fields(cls) else None
    if alias is not None:  # an older spelling of a section key
        key = alias + (f".{rest}" if rest else "")
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(cls)
        if part not in fields:
            raise _unknown(key if i == len(parts) - 1 else ".".join(parts[: i + 1]), list(fields), f"override '{item}'")
        tp = fields[part][1]
        if i == len(parts) - 1:
            if _is_dataclass_type(tp):
                raise ValueError(f"override '{item}': '{key}' is a section; set its keys as {key}.KEY=VALUE")
            values[part] = _coerce(raw, tp, key, f"override '{item}'", from_string=True)
        else:
            if not _is_dataclass_type(tp):
                raise ValueError(f"override '{item}': '{'.'.join(parts[: i + 1])}' has no sub-keys")
            values = values.setdefault(part, {})
            cls = tp


def _build(cls: type[T], values: dict[str, Any]) -> T:
    kwargs = {}
    for name, (_, tp) in _fields(cls).items():
        if name in values:
            kwargs[name] = _build(tp, values[name]) if _is_dataclass_type(tp) else values[name]
    return cls(**kwargs)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, dict):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, where: str, from_string: bool) -> Any:
    """Check `value` against type `tp`, converting where the meaning is unambiguous (strings from the command
    line, ints for floats, YAML's '1e-4' which PyYAML reads as a string); raise a one-line ValueError otherwise."""

    def bad(detail: str = "") -> ValueError:
        return ValueError(f"config key '{key}' in {where}: expected {_type_name(tp)}, got {value!r}{detail}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return yaml.safe_load(value) if from_string else value
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NULLS)):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, where, from_string)
            except ValueError:
                continue
        raise bad()
    if origin is Literal:
        for arg in args:
            if value == arg or (isinstance(value, str) and str(arg) == value.strip()):
                return arg
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad()
    if tp in (int, float):
        numeric = (int,) if tp is int else (int, float)  # an int is a fine float; a float is no int
        if isinstance(value, numeric) and not isinstance(value, bool):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not from_string:
            return str(value)  # `name: 2024` in YAML
        raise bad()
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise bad()
    if origin in (list, tuple):
        if isinstance(value, str):
            if value.strip().startswith("["):
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise bad() from None
                from_string = False
            else:
                value = [v.strip() for v in value.split(",")] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise bad()
        if origin is list:
            return [_coerce(v, args[0] if args else Any, key, where, from_string) for v in value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, where, from_string) for v in value)
        if args and len(value) != len(args):
            raise bad(f" ({len(value)} items, need {len(args)})")
        return tuple(_coerce(v, a, key, where, from_string) for v, a in zip(value, args or [Any] * len(value)))
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise bad() from None
        if not isinstance(value, dict):
            raise bad()
        return value
    raise ValueError(f"config key '{key}': unsupported field type {_type_name(tp)} in the config class")
