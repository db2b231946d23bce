"""torchvision ResNet-18/50 with ``fc`` replaced by ``Linear(feat, d)``."""

from __future__ import annotations

from torch import nn

from courier.model.checkpointing import CheckpointSequential


def build_resnet(name: str, embedding_dim: int, gradient_checkpointing: bool) -> nn.Module:
    """Random-init ResNet (``weights=None``: never downloads) mapping [N,3,H,W] -> [N,d].

    Checkpoint units are the residual blocks of ``layer1..layer4``; keys stay the
    torchvision keys so ImageNet state dicts load unchanged (``fc.*`` ignored).
    """
    # torchvision is imported lazily: it adds seconds to every process start
    # (data-parallel workers included) and small_cnn runs do not need it.
    from torchvision.models import resnet18, resnet50

    families = {"resnet18": resnet18, "resnet50": resnet50}
    model = families[name](weights=None)
    in_features = model.fc.in_features  # 512 (resnet18) or 2048 (resnet50)
    model.fc = nn.Linear(in_features, embedding_dim)
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, layer_name)
        setattr(
            model, layer_name, CheckpointSequential.from_sequential(layer, gradient_checkpointing)
        )
    return model
