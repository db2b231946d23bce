"""One typed config object for every stage.

Loaded from ``conf/base.yaml`` merged with a profile (``conf/local.yaml`` is the
embedded default) and ``--set section.key=value`` overrides. Unknown keys and
wrongly typed values are errors that name the offending key: a typo in a
nightly job's config must fail loudly, not fall back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from courier.checks import require
from courier.ctr.config import CtrConfig, CtrSamplesConfig
from courier.experiment.config import ExperimentConfig
from courier.features.config import AssignConfig, ClusterConfig, EmbedConfig, ReportConfig
from courier.model.config import LossConfig, ModelConfig
from courier.world.config import WorldConfig

def _project_root() -> Path:
    """The folder holding conf/ and sql/ (and against which relative paths resolve).

    The checkout courier is imported from (an editable install, PYTHONPATH), or, for courier
    installed from its wheel (a packed environment's driver in cluster mode),
    ``<sys.prefix>/share/courier``, where the wheel puts them (pyproject.toml, data-files).
    """
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "conf" / "base.yaml").is_file():
        return checkout
    installed = Path(sys.prefix) / "share" / "courier"
    return installed if (installed / "conf" / "base.yaml").is_file() else checkout


PROJECT_ROOT = _project_root()
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


@dataclass(frozen=True)
class SparkConfig:
    """How to build the SparkSession (see courier.spark)."""

    master: str | None = "local[*]"  # None: leave it to spark-submit --master
    app_name: str = "courier"
    # Root of the embedded warehouse: Delta tables and the Derby metastore live here.
    warehouse_dir: str = "warehouse"
    # "derby": a persistent Hive metastore on Derby inside warehouse_dir (embedded default), served
    # to every process by Derby's network server, started on demand (courier.catalog);
    # "external": use the Hive metastore configured in `conf` (cluster); "in-memory": none.
    catalog: str = "derby"
    # The Derby server stops after this many seconds without a courier process using it.
    catalog_idle_s: int = 300
    # Folder of Delta JARs resolved by `make setup`; None when spark-submit --packages provides them.
    jars_dir: str | None = ".jars"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    ui_enabled: bool = True
    log_level: str = "WARN"
    # JVM log4j2 configuration (project-relative or absolute); None = Spark's or the cluster's own.
    log4j_config: str | None = "conf/log4j2.properties"
    conf: dict[str, str] = field(default_factory=dict)


_PLAIN_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class TablesConfig:
    """Table names (all Delta, all in one database)."""

    database: str = "courier"
    raw_items: str = "raw_items"
    raw_impressions: str = "raw_impressions"
    item_images: str = "item_images"
    courier_samples: str = "courier_samples"
    courier_training_rows: str = "courier_training_rows"
    rejects: str = "rejects"
    pipeline_runs: str = "pipeline_runs"
    eval_item_styles: str = "eval_item_styles"
    eval_user_preferences: str = "eval_user_preferences"
    item_embeddings: str = "item_embeddings"
    cluster_centroids: str = "cluster_centroids"
    item_image_features: str = "item_image_features"
    # Analyst views over the feature tables (sql/features/<view>.sql).
    item_clusters_current: str = "item_clusters_current"
    cluster_summary: str = "cluster_summary"
    category_clusters: str = "category_clusters"
    cluster_click_share_daily: str = "cluster_click_share_daily"
    ctr_samples: str = "ctr_samples"

    def __post_init__(self) -> None:
        # Names reach SQL through IDENTIFIER(:param) or quote_identifier, never pasted; refusing
        # anything but plain identifiers here stops a hostile --set before any job starts.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            require(isinstance(value, str) and _PLAIN_IDENTIFIER.match(value) is not None,
                    f"tables.{f.name} must be a plain identifier (letters, digits and _, not starting "
                    f"with a digit), got {value!r}")

    def qualified(self, name: str) -> str:
        """``database.table`` for a table attribute name, e.g. ``qualified("rejects")``."""
        return f"{self.database}.{getattr(self, name)}"


@dataclass(frozen=True)
class SamplesConfig:
    """The sample build (method.md notation)."""

    l_pv: int = 5
    l_click: int = 5
    # Fraction of unclicked impressions kept, chosen by a deterministic hash of
    # (request_id, item_id, sampling_seed): the same input always gives the same sample.
    negative_keep_rate: float = 0.5
    sampling_seed: int = 0
    # Click history may come from before the requested date range, up to this far back.
    history_lookback_days: int = 60
    image_size: int = 64
    jpeg_quality: int = 90
    # Source images beyond these are rejected as "image_too_large" before their pixels are
    # decoded (a decompression bomb is a small file whose header claims a huge size).
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    # Rows per Parquet row group of courier_training_rows; readers shard by row group.
    rows_per_row_group: int = 256
    # Events after this instant are rejected as "future_timestamp"; None = now.
    max_event_ts: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """The training run (courier train)."""

    batch_size: int = 64  # rows (page views) per process
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-6
    num_processes: int = 1
    use_gpu: bool = False
    mixed_precision: str = "auto"  # "auto" | "bf16" | "fp16" | "off"
    log_every_steps: int = 10
    checkpoint_every_steps: int = 100
    checkpoint_dir: str = "warehouse/checkpoints"
    loader_workers: int = 2
    seed: int = 0
    table_version: int | None = None  # pinned Delta version; None = latest at start
    # The data-parallel launcher and process group (courier/train/backends.py):
    # "torch_distributor" (TorchDistributor + DDP) or "horovod" (horovod.spark.run; Horovod is
    # built from source by `make setup`, build/horovod/install.sh).
    backend: str = "torch_distributor"
    # horovod: seconds for the Spark tasks to start and register before the run fails.
    start_timeout_s: int = 600
    # TorchDistributor: True runs the processes on the driver node, False on the executors.
    local_mode: bool = True
    loader_kind: str = "petastorm"  # courier.data.make_batch_source(kind=...)
    # The latest files of the snapshot (by path, so the latest dt partitions) are held out
    # from training and used for the end-of-run evaluation; 0 = no evaluation.
    holdout_fraction: float = 0.1
    eval_max_rows: int = 2048
    eval_init_baseline: bool = True  # also evaluate the model at step 0 (same seed)
    keep_checkpoints: int = 2  # newest step checkpoints kept per run (the final one always)
    # torch.use_deterministic_algorithms; CPU runs are deterministic without it.
    deterministic: bool = False
    # What `courier train` optimises: "courier" (method.md), or an image-only baseline of the
    # CTR comparison (courier/train/baselines.py): "random_init" (no step), "label_aligned"
    # (predict the item's category), "simclr" (augmented views, NT-Xent at simclr_tau).
    objective: str = "courier"
    simclr_tau: float = 0.2
    # How the loader forms batches: "none" (rows of a shuffle window in random order) or
    # "query" (one query after another within each window, so the in-batch negatives share
    # the page views' category: harder than a random other category's items).
    batch_grouping: str = "none"
    # Files (row groups) whose rows are shuffled together: larger windows mix more (and give
    # purer query groups) at the cost of decoded memory (the loader logs its estimate).
    shuffle_window: int = 4
    # Train on the newest N clicks of each row's history (the rows hold samples.l_click); None = all
    # of them. Lets one sample build serve encoders with shorter histories (the experiment's arms).
    history_clicks: int | None = None


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///warehouse/mlflow.db"
    # None: next to a SQLite store (<db folder>/mlartifacts), else the server's default.
    artifact_location: str | None = None
    experiment: str = "courier"
    registered_model: str = "courier-image-encoder"
    alias: str = "candidate"
    log_model: bool = True  # log + register the image encoder at the end of `courier train`



# Held-out metrics where higher is better (courier.train.evaluate); promotion compares one of them.
PROMOTION_METRICS = ("row_auc", "hit1", "inbatch_top1")


@dataclass(frozen=True)
class PromoteConfig:
    """``courier evaluate`` / ``courier promote``: when the ``mlflow.alias`` model replaces production.

    ``courier evaluate`` scores the candidate and the current production model on the
    candidate's held-out rows (one snapshot for both); ``courier promote`` moves
    ``to_alias`` to the candidate if its ``metric`` beats production's by ``margin``.
    """

    to_alias: str = "production"
    metric: str = "row_auc"
    margin: float = 0.002
    max_rows: int = 2048          # held-out rows scored per model
    batch_size: int = 64

    def __post_init__(self) -> None:
        require(self.metric in PROMOTION_METRICS,
                f"promote.metric must be one of {PROMOTION_METRICS}, got {self.metric!r}")
        require(self.margin >= 0.0, f"promote.margin must be >= 0, got {self.margin}")
        require(self.max_rows > 0 and self.batch_size > 0, "promote.max_rows and promote.batch_size must be > 0")
        require(bool(self.to_alias), "promote.to_alias must name an alias")


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
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_log_dict(self) -> dict[str, Any]:
        """``to_dict`` with secrets masked: what may be logged, tracked or written beside a run."""
        return mask_secrets(self.to_dict())

    def to_log_yaml(self) -> str:
        return yaml.safe_dump(self.to_log_dict(), sort_keys=False)

    def replace(self, overrides: Sequence[str]) -> "CourierConfig":
        """A copy with ``section.key=value`` overrides applied."""
        data = self.to_dict()
        for override in overrides:
            _apply_override(data, override)
        return from_dict(CourierConfig, data)


# A key whose dotted path contains one of these names a secret (spark.hadoop.fs.s3a.secret.key,
# ...access.key, ...session.token, a JDBC password, an API token); "...provider" keys name a
# class, not a credential.
SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "access.key", "accesskey", "access_key",
                    "api_key", "apikey", "private.key", "credential")
MASK = "***"
_URL_PASSWORD = re.compile(r"^(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]*):(?P<password>[^@/\s]+)@")


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
    profile_path = Path(profile) if profile.endswith((".yaml", ".yml")) else conf_dir / f"{profile}.yaml"
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
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or cls.__name__
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {name: _coerce(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a section's own check (__post_init__): a user error, named
        raise ConfigError(str(exc)) from exc


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
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
        return {_coerce(key_tp, k, f"{path}.{k}"): _coerce(val_tp, v, f"{path}.{k}") for k, v in value.items()}
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
        keys = keys[:2] + [".".join(keys[2:])]
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
