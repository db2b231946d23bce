"""Each closed choice of the config has exactly one implementation in its registry, and back.

The config package holds the choices (it must load without torch); the registries that build
them live beside the implementations. These tests tie the two, so a member added on one side
only fails here, not in a nightly job.
"""

from __future__ import annotations

import pytest

from courier.config import Backbone, ModelConfig, TrainBackend


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


def test_the_small_cnn_family_builds_the_configured_width():
    import torch

    from courier.model.backbones import build_image_encoder

    encoder = build_image_encoder(ModelConfig(backbone="small_cnn", embedding_dim=8))
    assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
