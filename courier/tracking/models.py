"""Model references: which model a run uses, resolved ONCE, on the driver, to a concrete version;
and the preprocessing (``PreprocessingSpec``) every logged encoder carries in its metadata.

``models:/name@alias`` moves when someone promotes a model. Resolving it here,
before any task starts, and writing the concrete version on every row means
one run can never mix two models, and a later reader knows exactly which
model produced each embedding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
# models:/name/latest or /Production move like an alias but cannot be pinned the same way.
_MOVING_URI = re.compile(r"^models:/[^/@]+/[^/]+$")
# The key of a logged encoder's MLflow metadata that holds its PreprocessingSpec.
METADATA_KEY = "courier_preprocessing"


@dataclass(frozen=True)
class PreprocessingSpec:
    """What the model expects: uint8 RGB images [N, 3, image_size, image_size].

    ``mean``/``std`` are the training loader's normalisation (courier.data.decode),
    taken from it when the model is exported.
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input: str = "uint8 RGB [N, 3, S, S], 0..255, resized + center-cropped to S"
    output: str = "float32 [N, d], L2-normalised"

    def to_metadata(self) -> dict[str, Any]:
        return {METADATA_KEY: {**asdict(self), "mean": list(self.mean), "std": list(self.std)}}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None, where: str) -> PreprocessingSpec:
        """The spec stored with a logged model; ValueError naming ``where`` if it has none."""
        spec = (metadata or {}).get(METADATA_KEY)
        if not spec:
            raise ValueError(
                f"{where} carries no {METADATA_KEY!r} metadata: it was logged before models became "
                "self-describing (or by another tool). Re-train with `courier train` to register a "
                "model that takes decoded images and knows its own preprocessing."
            )
        return cls(
            image_size=int(spec["image_size"]), mean=tuple(spec["mean"]), std=tuple(spec["std"])
        )


class ModelResolutionError(LookupError):
    """The requested model, alias or version does not
    exist in the registry (the message names it)."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned for one run.

    Attributes:
        requested_uri: what was asked for (an alias URI, a version URI, ``runs:/...``).
        uri: the immutable URI the UDF loads (``models:/name/version`` for registry models).
        model_version: what every output row records (the registry version, or the URI itself
            for a model outside the registry).
        spec: the model's own preprocessing (input size, mean, std).
        embedding_dim: ``d`` of its output.
    """

    requested_uri: str
    uri: str
    model_version: str
    spec: PreprocessingSpec
    embedding_dim: int


def default_model_uri(registered_model: str, alias: str) -> str:
    return f"models:/{registered_model}@{alias}"


def _registry_version(client: MlflowClient, uri: str, tracking_uri: str) -> tuple[str, str]:
    """(concrete URI, version) of a registry URI; ModelResolutionError naming what is missing."""
    if match := _ALIAS_URI.match(uri):
        name, alias = match["name"], match["alias"]
        try:
            version = client.get_model_version_by_alias(name, alias).version
        except Exception as exc:  # MlflowException of several kinds: all mean "not there"
            raise ModelResolutionError(
                f"model {uri}: registered model {name!r} has no alias {alias!r} in the registry at "
                f"{tracking_uri} ({str(exc).splitlines()[0]}). Train one (`courier train`) or pass "
                "--model URI."
            ) from exc
        return f"models:/{name}/{version}", str(version)
    if match := _VERSION_URI.match(uri):
        name, version = match["name"], match["version"]
        try:
            client.get_model_version(name, version)
        except Exception as exc:
            raise ModelResolutionError(
                f"model {uri}: registered model {name!r} has no version {version} in the registry "
                f"at {tracking_uri} ({str(exc).splitlines()[0]})"
            ) from exc
        return uri, version
    raise AssertionError(f"not a registry URI: {uri}")  # resolve_model only passes matching URIs


def resolve_model(tracking_uri: str, uri: str) -> ResolvedModel:
    """Pin ``uri`` to a concrete model and read its preprocessing and output size.

    Raises:
        ModelResolutionError: the alias, version or model does not exist, or the model does not
            describe its preprocessing (logged by an older courier).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if _MOVING_URI.match(uri) and not _VERSION_URI.match(uri):
        raise ModelResolutionError(
            f"model {uri}: a stage or 'latest' reference moves and is not pinned by courier; "
            "pass an alias (models:/<name>@<alias>) or a version (models:/<name>/<version>)"
        )
    if _ALIAS_URI.match(uri) or _VERSION_URI.match(uri):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        concrete, version = _registry_version(client, uri, tracking_uri)
    # runs:/..., a logged model's models:/m-<id>, a path: immutable, so the URI is the version
    else:
        concrete, version = uri, uri
    try:
        info = mlflow.models.get_model_info(concrete)
    except Exception as exc:
        raise ModelResolutionError(
            f"model {concrete}: cannot read its MLflow model ({str(exc).splitlines()[0]})"
        ) from exc
    try:
        spec = PreprocessingSpec.from_metadata(info.metadata, f"model {concrete}")
    except ValueError as exc:
        raise ModelResolutionError(str(exc)) from exc
    outputs = info.signature.outputs.inputs if info.signature and info.signature.outputs else []
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise ModelResolutionError(
            f"model {concrete}: expected one [N, d] output in its signature, got {outputs}"
        )
    return ResolvedModel(
        requested_uri=uri,
        uri=concrete,
        model_version=version,
        spec=spec,
        embedding_dim=int(outputs[0].shape[1]),
    )
