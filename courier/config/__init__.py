"""One typed config object for every stage.

``CourierConfig`` and its loading live here; each section is defined, with its defaults and
checks, in the module of this package named for the stage that reads it (``plumbing.py``: spark,
tables, mlflow; ``world.py``, ``samples.py``, ``model.py``, ``train.py``, ``features.py``,
``ctr.py``, ``experiment.py``). Shared plumbing: it imports no stage, so loading a config imports
neither torch nor Spark.

Loaded from ``conf/base.yaml`` merged with a profile (``conf/local.yaml`` is the
embedded default) and ``--set section.key=value`` overrides. Unknown keys and
wrongly typed values are errors that name the offending key: a typo in a
nightly job's config must fail loudly, not fall back to a default.

Each default is written once, in its section's dataclass; the YAML files hold only what differs
(tests/unit/test_config_defaults.py). Closed choices are ``StrEnum``s (``TrainBackend``,
``Backbone``, ...), equal to their strings: YAML and ``--set`` give strings, each section's
``__post_init__`` turns them into members (or names the key), and ``to_dict`` gives strings back.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from courier.config.ctr import CtrConfig, CtrSamplesConfig, ImageUsage
from courier.config.experiment import ExperimentConfig
from courier.config.features import (
    AssignConfig,
    ClusterConfig,
    Device,
    EmbedConfig,
    GpuUse,
    ReportConfig,
)
from courier.config.model import Ablation, Backbone, LossConfig, ModelConfig
from courier.config.plumbing import Catalog, MlflowConfig, SparkConfig, TablesConfig
from courier.config.samples import SamplesConfig
from courier.config.train import (
    PROMOTION_METRICS,
    BatchGrouping,
    LoaderKind,
    MixedPrecision,
    Objective,
    PromoteConfig,
    PromotionMetric,
    TrainBackend,
    TrainConfig,
)
from courier.config.world import WorldConfig

__all__ = [
    "CONF_DIR",
    "PROJECT_ROOT",
    "PROMOTION_METRICS",
    "Ablation",
    "AssignConfig",
    "Backbone",
    "BatchGrouping",
    "Catalog",
    "ClusterConfig",
    "ConfigError",
    "CourierConfig",
    "CtrConfig",
    "CtrSamplesConfig",
    "Device",
    "EmbedConfig",
    "ExperimentConfig",
    "GpuUse",
    "ImageUsage",
    "LoaderKind",
    "LossConfig",
    "MixedPrecision",
    "MlflowConfig",
    "ModelConfig",
    "Objective",
    "PromoteConfig",
    "PromotionMetric",
    "ReportConfig",
    "SamplesConfig",
    "SparkConfig",
    "TablesConfig",
    "TrainBackend",
    "TrainConfig",
    "WorldConfig",
    "config_json",
    "from_dict",
    "load_config",
    "mask_secrets",
]


def _project_root() -> Path:
    """The folder holding conf/ and sql/ (and against which relative paths resolve).

    The checkout courier is imported from (an editable install, PYTHONPATH), or, for courier
    installed from its wheel (a packed environment's driver in cluster mode),
    ``<sys.prefix>/share/courier``, where the wheel puts them (pyproject.toml, data-files).
    """
    checkout = Path(__file__).resolve().parents[2]  # courier/config/__init__.py -> the checkout
    if (checkout / "conf" / "base.yaml").is_file():
        return checkout
    installed = Path(sys.prefix) / "share" / "courier"
    return installed if (installed / "conf" / "base.yaml").is_file() else checkout


PROJECT_ROOT = _project_root()
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


@dataclass(frozen=True)
class CourierConfig:
    """The whole resolved configuration of one job."""

    profile: str = "local"
    spark: SparkConfig = field(default_factory=SparkConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    assign: AssignConfig = field(default_factory=AssignConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    ctr_samples: CtrSamplesConfig = field(default_factory=CtrSamplesConfig)
    ctr: CtrConfig = field(default_factory=CtrConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (closed choices as their strings): what YAML, JSON and MLflow params hold."""
        return dataclasses.asdict(self, dict_factory=lambda items: {k: _plain(v) for k, v in items})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_log_dict(self) -> dict[str, Any]:
        """``to_dict`` with secrets masked: what may be logged, tracked or written beside a run."""
        return mask_secrets(self.to_dict())

    def to_log_yaml(self) -> str:
        return yaml.safe_dump(self.to_log_dict(), sort_keys=False)

    def replace(self, overrides: Sequence[str]) -> CourierConfig:
        """A copy with ``section.key=value`` overrides applied."""
        data = self.to_dict()
        for override in overrides:
            _apply_override(data, override)
        return from_dict(CourierConfig, data)


# A key whose dotted path contains one of these names a secret (spark.hadoop.fs.s3a.secret.key,
# ...access.key, ...session.token, a JDBC password, an API token); "...provider" keys name a
# class, not a credential.
SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "access.key",
    "accesskey",
    "access_key",
    "api_key",
    "apikey",
    "private.key",
    "credential",
)
MASK = "***"
_URL_PASSWORD = re.compile(
    r"^(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]*):(?P<password>[^@/\s]+)@"
)


def _is_secret_key(path: str) -> bool:
    lowered = path.lower()
    return not lowered.endswith("provider") and any(part in lowered for part in SECRET_KEY_PARTS)


def mask_secrets(data: Any, path: str = "") -> Any:
    """A copy of ``data`` (dicts, lists, scalars) with secret values replaced by ``MASK``.

    Masked: the value of every key whose dotted path looks like a secret (``SECRET_KEY_PARTS``),
    and the password of any ``scheme://user:password@host`` URL (a tracking URI with
    credentials, a JDBC or metastore URL).
    """
    if isinstance(data, dict):
        return {k: mask_secrets(v, f"{path}.{k}" if path else str(k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(mask_secrets(v, path) for v in data)
    if data is not None and path and _is_secret_key(path):
        return MASK
    if isinstance(data, str):
        return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", data)
    return data


T = TypeVar("T")


def load_config(
    profile: str = "local",
    overrides: Sequence[str] = (),
    conf_dir: Path | str = CONF_DIR,
) -> CourierConfig:
    """Load ``base.yaml`` + ``<profile>.yaml`` from ``conf_dir`` and apply overrides.

    ``profile`` may also be a path to a YAML file.
    """
    conf_dir = Path(conf_dir)
    data: dict[str, Any] = {}
    profile_path = (
        Path(profile) if profile.endswith((".yaml", ".yml")) else conf_dir / f"{profile}.yaml"
    )
    for path in (conf_dir / "base.yaml", profile_path):
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _deep_merge(data, loaded)
    data.setdefault("profile", profile_path.stem)
    for override in overrides:
        _apply_override(data, override)
    return from_dict(CourierConfig, data)


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # T: any dataclass
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or cls.__name__
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {
        name: _coerce(hints[name], value, f"{path}.{name}" if path else name)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a section's own check (__post_init__): a user error, named
        raise ConfigError(str(exc)) from exc


def _plain(value: Any) -> Any:
    """A closed choice's member as its string
    (tuples and lists of them too); anything else as it is."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value  # a closed choice: the section's __post_init__ checks it and names the key
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}: {errors}")
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {
            _coerce(key_tp, k, f"{path}.{k}"): _coerce(val_tp, v, f"{path}.{k}")
            for k, v in value.items()
        }
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        items = [_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if tp is str and isinstance(value, bool):
        return str(value).lower()  # Spark conf values: true/false
    if tp is str and isinstance(value, (int, float)):
        return str(value)
    if tp is str and hasattr(value, "isoformat"):
        return value.isoformat()
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    # Free-form maps (spark.conf) take dotted keys of their own: spark.conf.spark.sql.x=1.
    if len(keys) > 2 and keys[1] == "conf":
        keys = [*keys[:2], ".".join(keys[2:])]
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {key} is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def config_json(cfg: CourierConfig) -> str:
    """The resolved config as compact JSON, secrets masked (stored with runs in pipeline_runs)."""
    return json.dumps(cfg.to_log_dict(), sort_keys=True, default=str)
