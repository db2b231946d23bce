"""Mixed-precision policy: which autocast dtype and whether a GradScaler is needed.

bf16 has fp32's exponent range, so it needs no loss scaling; fp16 does. On CPU
autocast is always off: CPU bf16 kernels are slower than fp32 on most hosts
and the project's CPU runs are tests and benchmarks that must be exact.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from courier.checks import choices, one_of
from courier.config import MixedPrecision

log = logging.getLogger(__name__)

MODES = choices(MixedPrecision)


@dataclass(frozen=True)
class Precision:
    """The resolved policy.

    Attributes:
        mode: "bf16", "fp16" or "off".
        dtype: autocast dtype, None when off.
        use_scaler: fp16 only: scale the loss so small gradients do not flush to zero.
    """

    mode: str
    dtype: torch.dtype | None
    use_scaler: bool

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager[None]:
        """Context for the forward pass
        (the loss itself runs in fp32 inside, see courier.model.losses)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)


def resolve_precision(
    requested: str, device: torch.device, bf16_supported: bool | None = None
) -> Precision:
    """Map ``train.mixed_precision`` to a policy for ``device``.

    Args:
        requested: "auto" | "bf16" | "fp16" | "off".
        device: the training device.
        bf16_supported: override the CUDA capability probe (tests simulate a GPU with it).
    """
    requested = one_of(MixedPrecision, requested, "train.mixed_precision")
    if requested == "off":
        return Precision("off", None, False)
    if device.type != "cuda":
        if requested != "auto":
            log.warning(
                "train.mixed_precision=%s ignored on %s: CPU training runs in fp32",
                requested,
                device,
            )
        return Precision("off", None, False)
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if requested == "fp16" or (requested == "auto" and not bf16_supported):
        return Precision("fp16", torch.float16, True)
    if not bf16_supported:
        raise ValueError(
            "train.mixed_precision=bf16 but this GPU has no bf16 support; use fp16 or auto"
        )
    return Precision("bf16", torch.bfloat16, False)
