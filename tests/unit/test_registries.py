"""Each closed choice of the config has exactly one implementation in its registry, and back.

The config package holds the choices (it must load without torch); the registries that build
them live beside the implementations. These tests tie the two, so a member added on one side
only fails here, not in a nightly job.
"""

from __future__ import annotations

import pytest

from courier.config import Backbone, LoaderKind, ModelConfig, TrainBackend


def test_every_backbone_has_one_family_and_every_family_a_backbone():
    from courier.model.backbones import BACKBONE_FAMILIES, HEAD_PREFIXES

    assert list(BACKBONE_FAMILIES) == list(Backbone)
    assert set(HEAD_PREFIXES) == {b.value for b in Backbone}


def test_every_training_backend_has_one_class_named_for_it():
    from courier.train.backends import BACKENDS, make_backend

    assert list(BACKENDS) == list(TrainBackend)
    for name, cls in BACKENDS.items():
        assert cls.name == name and type(make_backend(name.value)) is cls
    with pytest.raises(
        ValueError,
        match=r"train.backend must be one of \('torch_distributor', 'horovod'\), got 'mpi'",
    ):
        make_backend("mpi")


def test_every_loader_kind_has_one_reader_named_for_it():
    from courier.data.snapshot import TrainingSnapshot
    from courier.data.source import LOADERS, make_batch_source

    assert list(LOADERS) == list(LoaderKind)
    for kind, reader in LOADERS.items():
        assert reader().kind == kind
    snapshot = TrainingSnapshot("db.rows", 0, ("file:/t/a.parquet",), (8,), 8, 5, 5, 32)
    with pytest.raises(
        ValueError,
        match=r"train.loader_kind must be one of \('petastorm', 'pyarrow'\), got 'tfrecord'",
    ):
        make_batch_source(
            snapshot, 0, 1, 4, 0, workers=1, kind="tfrecord", shuffle_window=1, group_by_query=False
        )


def test_the_small_cnn_family_builds_the_configured_width():
    import torch

    from courier.model.backbones import build_image_encoder

    encoder = build_image_encoder(ModelConfig(backbone="small_cnn", embedding_dim=8))
    assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
