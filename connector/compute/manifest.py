"""The manifest of a model package: what the model is, what it expects as input and what it returns.

An AI team writes it (`manifest.json` in the package); the connector reads it at the API edge
with these pydantic models, so a wrong manifest is refused with every problem named before any
weight is read. This module only describes; it never loads a model or touches data.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The networks a package may name: built by the connector from MONAI's own classes, so a package
# carries numbers (weights), never code. Parameters are checked by connector.compute.networks.
AllowedNetwork = Literal["DenseNet121", "ResNet", "UNet", "SegResNet", "SwinUNETR", "BasicUNet"]
Modality = Annotated[str, Field(pattern=r"^[A-Z]{2,4}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSpec(_Strict):
    """An allow-listed MONAI network and its constructor arguments (plain JSON values only)."""

    name: AllowedNetwork
    parameters: dict[str, int | float | bool | str | list[int] | list[float]] = Field(default_factory=dict)


class Normalisation(_Strict):
    """How voxel intensities are scaled before the model sees them."""

    kind: Literal["minmax", "zscore", "window"] = "minmax"
    window_center: float | None = None  # kind "window": e.g. -600 for lung CT
    window_width: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _window_complete(self) -> Normalisation:
        if self.kind == "window" and (self.window_center is None or self.window_width is None):
            raise ValueError("a window normalisation needs window_center and window_width")
        return self


class InputSpec(_Strict):
    """The tensors the model takes: one per study (2D: one image; 3D: the series as a volume)."""

    modalities: list[Modality] = Field(min_length=1, max_length=10)
    dimensions: Literal[2, 3]
    spatial_size: list[Annotated[int, Field(ge=1, le=1024)]] = Field(min_length=2, max_length=3)
    spacing_mm: list[Annotated[float, Field(gt=0, le=50)]] | None = None  # 3D: resample to this first
    channels: Literal[1, 3] = 1
    normalisation: Normalisation = Field(default_factory=Normalisation)

    @model_validator(mode="after")
    def _sizes_match_dimensions(self) -> InputSpec:
        if len(self.spatial_size) != self.dimensions:
            raise ValueError(f"spatial_size needs {self.dimensions} numbers for {self.dimensions}D input")
        if self.spacing_mm is not None and len(self.spacing_mm) != self.dimensions:
            raise ValueError(f"spacing_mm needs {self.dimensions} numbers for {self.dimensions}D input")
        return self


class OutputSpec(_Strict):
    """What the model returns per study and what the job releases.

    classification: per-study class probabilities over `labels`;
    segmentation-statistics: per-study volume (mL, 3D) or area (mm², 2D) of each label;
    aggregate-metrics: only cohort-level summaries (counts and means per label) leave.
    """

    kind: Literal["classification", "segmentation-statistics", "aggregate-metrics"]
    labels: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=256)


class Manifest(_Strict):
    """`manifest.json` of a model package."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")
    framework: Literal["monai", "torchscript"]
    network: NetworkSpec | None = None  # framework "monai": the network to build
    weights: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.(safetensors|pt)$")
    input: InputSpec
    output: OutputSpec
    description: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _framework_consistent(self) -> Manifest:
        if self.framework == "monai":
            if self.network is None:
                raise ValueError("framework 'monai' needs a network (an allow-listed MONAI class)")
            if not self.weights.endswith(".safetensors"):
                raise ValueError("framework 'monai' takes its weights as .safetensors (no pickled files)")
        if self.framework == "torchscript":
            if self.network is not None:
                raise ValueError("framework 'torchscript' carries its own graph; leave out network")
            if not self.weights.endswith(".pt"):
                raise ValueError("framework 'torchscript' takes a TorchScript archive (.pt)")
        return self
