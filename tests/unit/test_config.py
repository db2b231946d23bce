"""The typed config: profiles, overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from courier.catalog import CatalogServer
from courier.config import CONF_DIR, ConfigError, load_config
from courier.spark import spark_conf


def test_local_profile_loads_with_defaults():
    cfg = load_config("local")
    assert cfg.profile == "local"
    assert cfg.samples.l_pv == 5 and cfg.samples.l_click == 5
    assert cfg.loss.tau == 0.05
    assert cfg.spark.catalog == "derby"


def test_cluster_example_loads():
    cfg = load_config(str(CONF_DIR / "cluster.example.yaml"))
    assert cfg.spark.master is None and cfg.spark.catalog == "external"
    assert cfg.model.backbone == "swin_t" and cfg.train.use_gpu
    assert (
        cfg.cluster.k == 100_000 and cfg.embed.device == "auto" and cfg.spark.log4j_config is None
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cluster.k=1", r"cluster.k must be >= 2, got 1"),
        ("embed.device=tpu", r"embed.device must be one of"),
        ("embed.arrow_batch_rows=0", r"embed.arrow_batch_rows must be positive"),
        ("assign.first_valid_from=yesterday", r"assign.first_valid_from must be an ISO timestamp"),
        (
            "cluster.min_points_per_centroid=500",
            r"min_points_per_centroid must be in 1..max_points_per_centroid",
        ),
    ],
)
def test_feature_sections_are_validated_where_defined(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("local", [override])


def test_overrides_are_typed():
    cfg = load_config(
        "local",
        [
            "samples.l_pv=10",
            "samples.negative_keep_rate=1",
            "spark.master=local[2]",
            "spark.conf.spark.sql.shuffle.partitions=3",
            "world.start_date=2026-02-01",
        ],
    )
    assert cfg.samples.l_pv == 10
    assert cfg.samples.negative_keep_rate == 1.0 and isinstance(
        cfg.samples.negative_keep_rate, float
    )
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "3"
    assert cfg.world.start_date == "2026-02-01"
    assert cfg.replace(["samples.l_pv=3"]).samples.l_pv == 3 and cfg.samples.l_pv == 10
    assert cfg.replace(["train.lr=1e-3"]).train.lr == 0.001


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("samples.l_pvv=3", r"samples: unknown key\(s\) \['l_pvv'\]"),
        ("samples.l_pv=five", r"samples.l_pv: expected int"),
        ("spark.ui_enabled=maybe", r"spark.ui_enabled: expected true/false"),
        ("nonsense", r"must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", [override])


def test_missing_profile_is_named():
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yaml"):
        load_config("nope")


def test_spark_conf_has_delta_and_the_derby_server_catalog(tmp_path):
    cfg = load_config("local", [f"spark.warehouse_dir={tmp_path}"])
    with pytest.raises(ValueError, match="needs the warehouse's catalog server"):
        spark_conf(cfg.spark)
    conf = spark_conf(cfg.spark, CatalogServer(tmp_path, 41527, "s3cret"))
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"].endswith("DeltaCatalog")
    assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"] == (
        f"jdbc:derby://127.0.0.1:41527/{tmp_path}/metastore_db;create=true"
    )
    assert conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] == "s3cret"
    assert conf["spark.driver.extraClassPath"].endswith(".jars/derbyclient-10.16.1.1.jar")
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert any("delta-spark" in jar for jar in conf["spark.jars"].split(","))
    assert conf["spark.driver.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=file:")
    assert conf["spark.driver.extraJavaOptions"].endswith("conf/log4j2.properties")


def test_missing_delta_jars_say_how_to_fix(tmp_path):
    cfg = load_config("local", [f"spark.jars_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="make setup"):
        spark_conf(cfg.spark)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment.variants=[none,imagenet_swin_t]"], r"set experiment.imagenet_weights"),
        (["experiment.step_values=[40,40]"], r"experiment.step_values must be distinct"),
        (
            ["experiment.variants=[none,courier_v2]"],
            r"experiment.variants: unknown \['courier_v2'\]",
        ),
    ],
)
def test_experiment_section_is_validated_where_defined(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("local", overrides)


def test_experiment_encoder_variants_get_their_own_tables_budget_and_backbone():
    from courier.experiment.arms import arms, variant_config

    cfg = load_config(
        "local",
        [
            "experiment.variants=[none,oracle,courier,courier_query_batches,imagenet_swin_t]",
            "experiment.imagenet_weights=/models/swin_t.pth",
            "experiment.train_steps=120",
            "experiment.step_values=[40,400]",
            "experiment.usages=[]",
        ],
    )
    assert [a.name for a in arms(cfg.experiment)] == [
        "none",
        "oracle",
        "courier/cluster_id",
        "courier_query_batches",
        "imagenet_swin_t",
        "courier_steps40",
        "courier_steps400",
    ]
    long = variant_config(cfg, "courier_steps400")
    # More steps than one epoch of the demo shop (350):
    # the step budget, not the epoch count, governs.
    assert (long.train.max_steps, long.train.epochs) == (400, 400)
    assert long.tables.item_embeddings == "exp_courier_steps400_item_embeddings"
    assert long.mlflow.registered_model == "courier-image-encoder-exp-courier_steps400"
    grouped = variant_config(cfg, "courier_query_batches")
    assert (grouped.train.batch_grouping, grouped.train.max_steps) == ("query", 120)
    imagenet = variant_config(cfg, "imagenet_swin_t")
    assert (
        imagenet.model.backbone,
        imagenet.model.pretrained_weights_path,
        imagenet.train.objective,
    ) == ("swin_t", "/models/swin_t.pth", "random_init")
    assert variant_config(cfg, "oracle") is cfg


def test_each_seed_trains_its_own_encoder_into_its_own_tables():
    from courier.config.experiment import encoder_builds, encoder_key, encoder_seed, variant_of
    from courier.experiment.arms import variant_config

    cfg = load_config(
        "local",
        [
            "experiment.variants=[none,random_init,courier]",
            "experiment.seeds=[3,5]",
            "experiment.step_values=[40]",
        ],
    )
    assert encoder_builds(cfg.experiment) == [
        ("random_init", 3),
        ("random_init", 5),
        ("courier", 3),
        ("courier", 5),
        ("courier_steps40", 3),
        ("courier_steps40", 5),
    ]
    five = variant_config(cfg, "courier_steps40", seed=encoder_seed(cfg.experiment, 5))
    assert (five.train.seed, five.train.max_steps) == (5, 40)
    assert five.tables.ctr_samples == "exp_courier_steps40_s5_ctr_samples"
    assert five.mlflow.registered_model == "courier-image-encoder-exp-courier_steps40-s5"
    assert (
        variant_config(cfg, "courier", 16, 3).tables.ctr_samples == "exp_courier_s3_k16_ctr_samples"
    )
    assert variant_of(encoder_key("courier_steps40", 5)) == "courier_steps40"
    shared = cfg.replace(["experiment.encoder_seeds=false", "train.seed=9"])
    assert encoder_builds(shared.experiment) == [
        ("random_init", None),
        ("courier", None),
        ("courier_steps40", None),
    ]
    one = variant_config(shared, "courier", seed=encoder_seed(shared.experiment, 5))
    assert (one.train.seed, one.tables.ctr_samples) == (9, "exp_courier_ctr_samples")


# Each encoder variant's settings written as `--set` overrides, independently of the typed
# EncoderVariants of courier/config/experiment.py that must give the same configs.
VARIANT_SETTINGS = {
    "random_init": ["train.objective=random_init"],
    "label_aligned": ["train.objective=label_aligned"],
    "simclr": ["train.objective=simclr"],
    "courier": [],
    "courier_no_ucs": ["loss.ablation=no_ucs"],
    "courier_no_contrast": ["loss.ablation=no_contrast"],
    "courier_no_reconstruction": ["loss.ablation=no_reconstruction"],
    "courier_no_neg_pv": ["loss.ablation=no_neg_pv"],
    "courier_query_batches": ["train.batch_grouping=query", "train.shuffle_window=16"],
    "imagenet_swin_t": [
        "train.objective=random_init",
        "model.backbone=swin_t",
        "model.pretrained_weights_path=/models/swin_t.pth",
    ],
    "courier_steps40": ["train.max_steps=40", "train.epochs=40"],
}


def _variant_as_overrides(cfg, variant: str, k: int | None, seed: int | None) -> list[str]:
    """What variant_config gives, as the `--set` overrides it applied before it was typed."""
    from courier.experiment.arms import FEATURE_TABLES, PER_K_TABLES

    name = variant if seed is None else f"{variant}_s{seed}"
    out = [f"tables.{t}=exp_{name}_{t}" for t in FEATURE_TABLES]
    out += [
        f"mlflow.registered_model={cfg.mlflow.registered_model}-exp-{variant}"
        + ("" if seed is None else f"-s{seed}"),
        f"report.out_dir={cfg.experiment.out_dir}/{variant}"
        + ("" if seed is None else f"/seed{seed}"),
    ]
    if seed is not None:
        out.append(f"train.seed={seed}")
    if (steps := cfg.experiment.train_steps) is not None:
        out += [f"train.max_steps={steps}", f"train.epochs={steps}"]
    out += VARIANT_SETTINGS[variant]  # last: courier_steps40 sets its own budget
    if k is not None:
        out += [f"tables.{t}=exp_{name}_k{k}_{t}" for t in PER_K_TABLES] + [f"cluster.k={k}"]
    return out


@pytest.mark.parametrize(
    ("k", "seed", "extra"),
    [
        # values a variant must keep: a window, a budget and a backbone other than the defaults
        (
            None,
            None,
            ["train.shuffle_window=8", "train.max_steps=7", "model.backbone=resnet18"],
        ),
        (16, 3, ["experiment.train_steps=120", "loss.ablation=no_ucs"]),
    ],
)
def test_each_variant_config_is_its_settings_applied_as_overrides(k, seed, extra):
    from courier.experiment.arms import variant_config

    cfg = load_config(
        "local",
        [
            "experiment.variants=[none,oracle,published,"
            + ",".join(v for v in VARIANT_SETTINGS if v != "courier_steps40")
            + "]",
            "experiment.imagenet_weights=/models/swin_t.pth",
            "experiment.step_values=[40]",
            *extra,
        ],
    )
    for variant in VARIANT_SETTINGS:
        typed = variant_config(cfg, variant, k, seed)
        assert typed == cfg.replace(_variant_as_overrides(cfg, variant, k, seed)), variant
    steps = variant_config(cfg, "courier_steps40", k, seed)
    assert (steps.train.max_steps, steps.train.epochs) == (40, 40)
    kept = variant_config(cfg, "courier", k, seed)
    assert kept.train.shuffle_window == cfg.train.shuffle_window
    assert kept.model.backbone == cfg.model.backbone and kept.loss == cfg.loss
    assert variant_config(cfg, "courier_no_neg_pv", k, seed).loss.ablation == "no_neg_pv"
    assert variant_config(cfg, "published", k, seed) is cfg


def test_train_section_rejects_an_unknown_batch_grouping():
    from courier.train.launch import check_train_config

    with pytest.raises(
        ValueError, match=r"train.batch_grouping must be one of \('none', 'query'\)"
    ):
        check_train_config(load_config("local", ["train.batch_grouping=category"]))


def test_train_section_rejects_an_unknown_backend():
    from courier.train.launch import check_train_config

    check_train_config(load_config("local", ["train.backend=horovod"]))
    with pytest.raises(
        ValueError,
        match=r"train.backend must be one of \('torch_distributor', 'horovod'\), got 'mpi'",
    ):
        check_train_config(load_config("local", ["train.backend=mpi"]))


SECRETS = [
    "spark.conf={spark.hadoop.fs.s3a.secret.key: s3-SECRET-1, spark.hadoop.fs.s3a.access.key: "
    "AKIA-SECRET-2, spark.hadoop.fs.s3a.aws.credentials.provider: com.example.Provider, "
    "spark.hadoop.javax.jdo.option.ConnectionPassword: jdbc-SECRET-3}",
    "mlflow.tracking_uri=https://courier:mlflow-SECRET-4@mlflow.internal:5000",
]


def test_secrets_are_masked_in_the_logged_config():
    cfg = load_config("local", SECRETS)
    logged = cfg.to_log_yaml()
    for n in range(1, 5):
        assert f"SECRET-{n}" not in logged, n
    conf = cfg.to_log_dict()["spark"]["conf"]
    assert conf["spark.hadoop.fs.s3a.secret.key"] == conf["spark.hadoop.fs.s3a.access.key"] == "***"
    # a class, not a secret
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"] == "com.example.Provider"
    assert cfg.to_log_dict()["mlflow"]["tracking_uri"] == "https://courier:***@mlflow.internal:5000"
    # The job itself still gets the real values.
    assert cfg.spark.conf["spark.hadoop.fs.s3a.secret.key"] == "s3-SECRET-1"


def test_the_cli_logs_the_resolved_config_without_secrets(caplog: pytest.LogCaptureFixture):
    import argparse

    from jobs.cli import _config

    with caplog.at_level("INFO", logger="courier"):
        cfg = _config(argparse.Namespace(profile="local", set=SECRETS))
    assert "resolved config" in caplog.text and "s3a.secret.key: '***'" in caplog.text
    assert "SECRET-" not in caplog.text
    assert cfg.mlflow.tracking_uri.endswith("mlflow-SECRET-4@mlflow.internal:5000")


def test_the_config_stored_with_pipeline_runs_has_no_secrets():
    from courier.config import config_json

    stored = config_json(load_config("local", SECRETS))
    assert "SECRET-" not in stored and '"spark.hadoop.fs.s3a.secret.key": "***"' in stored


def test_history_clicks_must_fit_the_rows_history():
    from courier.train.launch import check_train_config

    check_train_config(load_config("local", ["samples.l_click=20", "train.history_clicks=5"]))
    with pytest.raises(
        ValueError, match=r"train.history_clicks must be in 1..samples.l_click \(5\)"
    ):
        check_train_config(load_config("local", ["samples.l_click=5", "train.history_clicks=20"]))


def test_newest_clicks_keeps_the_last_slots_of_every_click_key():
    import torch

    from courier.data.decode import newest_clicks

    ids = torch.tensor([[-1, -1, 7, 8, 9], [1, 2, 3, 4, 5]])
    batch = {
        "click_item_ids": ids,
        "click_mask": ids != -1,
        "click_images": ids[..., None].float(),
        "click_image_keys": ids * 10,
        "pv_item_ids": torch.tensor([[1, 2], [3, 4]]),
    }
    short = newest_clicks(batch, 2)
    assert short["click_item_ids"].tolist() == [[8, 9], [4, 5]]
    assert short["click_image_keys"].tolist() == [[80, 90], [40, 50]] and short["click_mask"].all()
    assert short["click_images"].shape == (2, 2, 1) and short["pv_item_ids"] is batch["pv_item_ids"]
    assert newest_clicks(batch, None) is batch


def test_loading_the_config_and_the_sql_and_status_paths_imports_neither_torch_nor_faiss():
    import subprocess
    import sys

    code = (
        "import sys, courier.config, courier.status, courier.sql_files, jobs.cli; "
        "print(sorted(m for m in ('torch', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("samples.l_pv=0", r"samples.l_pv must be >= 1, got 0"),
        (
            "samples.negative_keep_rate=1.5",
            r"samples.negative_keep_rate must be in \[0, 1\], got 1.5",
        ),
        ("samples.jpeg_quality=101", r"samples.jpeg_quality must be in 1..100, got 101"),
        (
            "samples.max_event_ts=tomorrow",
            r"samples.max_event_ts must be null or an ISO timestamp, got 'tomorrow'",
        ),
    ],
)
def test_samples_section_is_validated_where_defined(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.backbone=vit",
            r"model.backbone must be one of \('swin_t', 'resnet18', 'resnet50', 'small_cnn'\), "
            r"got 'vit'",
        ),
        ("loss.ablation=no_pv", r"loss.ablation must be one of \('none', 'no_ucs', "),
        (
            "train.loader_kind=tfrecord",
            r"train.loader_kind must be one of \('petastorm', 'pyarrow'\), got 'tfrecord'",
        ),
        (
            "train.mixed_precision=fp8",
            r"train.mixed_precision must be one of \('auto', 'bf16', 'fp16', 'off'\)",
        ),
        (
            "train.objective=byol",
            r"train.objective must be one of "
            r"\('courier', 'random_init', 'label_aligned', 'simclr'\)",
        ),
        (
            "ctr.image_usage=pixels",
            r"ctr.image_usage must be one of \('none', 'vector', 'simscore', 'cluster_id'\)",
        ),
        (
            "cluster.use_gpu=maybe",
            r"cluster.use_gpu must be one of \('auto', 'yes', 'no'\), got 'maybe'",
        ),
        (
            "spark.catalog=glue",
            r"spark.catalog must be one of \('derby', 'external', 'in-memory'\), got 'glue'",
        ),
        (
            "promote.metric=loss",
            r"promote.metric must be one of \('row_auc', 'hit1', 'inbatch_top1'\), got 'loss'",
        ),
    ],
)
def test_closed_choices_name_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", [override])


def test_closed_choices_are_members_that_serialise_as_their_strings():
    import json

    from courier.config import Backbone, Catalog, TrainBackend, config_json

    cfg = load_config(
        str(CONF_DIR / "cluster.example.yaml"), ["train.backend=horovod", "spark.catalog=in-memory"]
    )
    assert cfg.train.backend is TrainBackend.HOROVOD and cfg.model.backbone is Backbone.SWIN_T
    assert cfg.spark.catalog is Catalog.IN_MEMORY and cfg.train.backend == "horovod"
    stored = json.loads(config_json(cfg))
    assert (
        stored["train"]["backend"],
        stored["spark"]["catalog"],
        stored["model"]["backbone"],
    ) == ("horovod", "in-memory", "swin_t")
    assert type(cfg.to_dict()["train"]["backend"]) is str and "backend: horovod" in cfg.to_yaml()
    assert cfg.replace([]) == cfg
