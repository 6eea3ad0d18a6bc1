"""Where a participant's data comes from: a partitioned dataset or its own source, and the fitted preprocessing."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from actors.spec.base import Strict


class PartitionSpec(Strict):
    kind: Literal["iid", "dirichlet", "shards"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration; small = skewed")
    shards_per_participant: int = Field(2, ge=1)
    min_size: int = Field(10, ge=1)


class DatasetSpec(Strict):
    """A benchmark dataset: shared out by a partitioner, or generated per participant.

    ``digits`` is scikit-learn's bundled 8x8 handwritten digits, so it works offline; a
    partitioner splits it. ``table`` is one pooled CSV/Parquet table (``path``) split
    into simulated sites by the same partitioners, its test split held out first. ``synthetic`` is Synthetic(alpha, beta) of the FedProx paper
    (:mod:`actors.data.synthetic`): each participant generates its own task and data inside its
    actor, keeps ``test_fraction`` of its rows as its own test split, and the driver
    evaluates on the pooled test splits of the first ``eval_participants`` participants.
    """

    name: Literal["digits", "synthetic", "table"] = "digits"
    path: str | None = Field(None, description="table: the pooled CSV/Parquet table to split into sites")
    label_column: str | list[str] = Field("label", description="table: the target column(s)")
    feature_columns: list[str] | None = Field(None, description="table: default every other column")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    partition: PartitionSpec = PartitionSpec()
    seed: int = Field(0, ge=0)
    public_size: int = Field(
        0, ge=0, description="training examples held out of the partition as the unlabelled "
        "public set that soft-label strategies (FedMD, FedDF, DS-FL) predict on",
    )
    # synthetic only (defaults: the paper's); a non-default value with digits is an error
    alpha: float = Field(1.0, ge=0, description="synthetic: how far participants' models differ")
    beta: float = Field(1.0, ge=0, description="synthetic: how far participants' inputs differ")
    num_features: int = Field(60, ge=1, description="synthetic: input dimension")
    num_classes: int = Field(10, ge=2, description="synthetic: label space")
    size_mu: float = Field(4.0, description="synthetic: sizes are min_size + LogNormal(size_mu, size_sigma)")
    size_sigma: float = Field(2.0, ge=0, description="synthetic: spread of the sizes' power law")
    min_size: int = Field(50, ge=2, description="synthetic: fewest rows a participant has")
    max_size: int | None = Field(10_000, ge=2, description="synthetic: most rows (None: no cap)")
    eval_participants: int = Field(
        100, ge=1, description="synthetic: the driver's test set pools the test splits of the "
        "first this many participants (all of them in a smaller run)",
    )

    @model_validator(mode="after")
    def _settings_fit_the_dataset(self) -> DatasetSpec:
        defaults = DatasetSpec.model_fields
        table_set = [f for f in TABLE_FIELDS if getattr(self, f) != defaults[f].default]
        if self.name != "table" and table_set:
            raise ValueError(f"{', '.join(table_set)}: table settings, not used by name: {self.name}")
        if self.name == "table" and self.path is None:
            raise ValueError("name: table needs path: the pooled CSV/Parquet table")
        if self.name in ("digits", "table"):
            stray = [f for f in SYNTHETIC_FIELDS if getattr(self, f) != defaults[f].default]
            if stray:
                raise ValueError(f"{', '.join(stray)}: synthetic settings, not used by name: {self.name}")
            return self
        if self.partition != PartitionSpec():
            raise ValueError(
                "partition does not apply to name: synthetic: each participant generates data "
                "from its own distribution (its skew comes from alpha and beta)")
        if self.public_size:
            raise ValueError("public_size is not available with name: synthetic (it has no shared pool)")
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size={self.max_size} is below min_size={self.min_size}")
        return self


SYNTHETIC_FIELDS = ("alpha", "beta", "num_features", "num_classes", "size_mu", "size_sigma",
                    "min_size", "max_size", "eval_participants")
"""The :class:`DatasetSpec` fields only ``name: synthetic`` reads."""


TABLE_FIELDS = ("path", "label_column", "feature_columns")
"""The :class:`DatasetSpec` fields only ``name: table`` reads."""


class PreprocessSpec(Strict):
    """Federated preprocessing of table features, fitted on global statistics.

    Each site sends counts, sums and sums of squares per numeric column and the set of
    values of each categorical column; the driver combines them into one transform that
    every site (and the evaluation table) applies. No site could fit it alone: its own
    statistics differ from the others'.
    """

    standardize: bool = Field(True, description="numeric features to zero mean and unit variance")
    impute: Literal["mean", "refuse"] = Field(
        "refuse", description="mean: a missing numeric value becomes the global mean (and a "
        "missing category its own 'missing' value); refuse: missing values are an error")
    categorical: list[str] = Field(
        default_factory=list, description="columns one-hot encoded over the union of the sites' values")
    standardize_target: bool | None = Field(
        None, description="regression: train on targets scaled to zero mean, unit variance "
        "(a flow of 3,000 vehicles/hour is no target for SGD); mse and mae are still reported in "
        "the target's own units. Default: as `standardize` for task: regression")


View = Literal["flat", "image", "sequence"]


class PartitionData(Strict):
    """This participant's shard of the run's shared ``dataset``."""

    source: Literal["partition"] = "partition"
    view: View = Field("flat", description="flat vectors, (C,H,W) images or (rows, features) sequences")
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="rows of this participant's shard held out as its own test "
        "split (how personalised models are judged); 0 evaluates on the dataset's test split")


class SiteData(Strict):
    """What every source a site owns shares: its label space, its own held-out rows, and
    how its features are shaped for the model."""

    num_classes: int | None = Field(
        None, ge=2, description="size of the label space shared by all (classification; "
        "regression takes its outputs from the target columns)")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="rows held out as the site's own test split")
    image_shape: tuple[int, int, int] | None = None
    view: View = "flat"

    @model_validator(mode="after")
    def _view_needs_shape(self) -> SiteData:
        if self.view != "flat" and self.image_shape is None:
            raise ValueError(f"view {self.view!r} needs image_shape: [C, H, W]")
        return self


class SiteFiles(SiteData):
    """``path`` may contain ``{index}`` (index within the group), ``{name}`` (participant
    name) and ``{group}``, or ``paths`` lists one per participant of the group."""

    path: str | None = None
    paths: list[str] | None = None

    @model_validator(mode="after")
    def _one_path(self) -> SiteFiles:
        if (self.path is None) == (self.paths is None):
            raise ValueError("give exactly one of 'path' (a template) or 'paths' (a list)")
        return self

    def path_for(self, index: int, name: str, group: str) -> str:
        if self.paths is not None:
            return self.paths[index]
        assert self.path is not None
        return self.path.format(index=index, name=name, group=group)


class TableColumns(Strict):
    """Which columns of a table are the target and which the features."""

    label_column: str | list[str] = Field(
        "label", description="the target column; a list of columns is a vector target (regression)")
    feature_columns: list[str] | None = Field(None, description="default: every other column")

    @property
    def label_columns(self) -> list[str]:
        return [self.label_column] if isinstance(self.label_column, str) else list(self.label_column)


class FileData(SiteFiles, TableColumns):
    """A participant's own table (CSV or Parquet): the cross-silo case."""

    source: Literal["file"]


class PythonData(SiteData):
    """A participant's own loader: ``factory`` is ``"package.module:function"``, called
    inside the participant as ``function(name=..., index=..., group=..., **options)``.

    It returns ``(x, y)``, ``(x_train, y_train, x_test, y_test)``, or a torch ``Dataset``
    of ``(x, y)`` pairs. A database, an image store, a site's own reader: anything the
    site's node can read.
    """

    source: Literal["python"]
    factory: str = Field(..., pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")

    @model_validator(mode="after")
    def _loader_accepts(self) -> PythonData:
        """Import the loader and check ``options`` against its signature now, not inside
        every participant after Ray started."""
        from actors.data.loaders import check_loader

        check_loader(self.factory, self.options)
        return self


class ImageData(SiteFiles):
    """A site's image folder in the common layout: one subfolder per class
    (``root/cat/001.png``). Images are resized to ``image_shape`` (C = 1 greyscale,
    3 RGB) and scaled to [0, 1]; reading them needs Pillow (``pip install fedray[images]``)."""

    source: Literal["images"]
    image_shape: tuple[int, int, int]
    view: View = "image"
    classes: list[str] | None = Field(
        None, description="class names in label order, the same at every site (default: the "
        "sorted subfolder names, which must then be the same at every site)")


DataSpec = Annotated[PartitionData | FileData | PythonData | ImageData, Field(discriminator="source")]


class FittedTransform(Strict):
    """The preprocessing fitted on every site's statistics (``orchestrator/server/preprocessing.py``):
    what each site and the evaluation table apply to their raw columns, in this order
    (numeric columns, then each categorical column's one-hot block)."""

    numeric: list[str]
    means: list[float]
    stds: list[float]
    categories: dict[str, list[str]] = Field(default_factory=dict)
    standardize: bool = True
    impute: Literal["mean", "refuse"] = "refuse"
    rows: int = Field(0, description="rows across the sites the statistics came from")
    target_means: list[float] = Field(default_factory=list, description="standardize_target: per target column")
    target_stds: list[float] = Field(default_factory=list)

    def scale_targets(self, y: np.ndarray) -> np.ndarray:
        """Regression targets as the model learns them (standardized when fitted so)."""
        if not self.target_stds:
            return y
        return ((y.reshape(len(y), -1) - np.asarray(self.target_means)) / np.asarray(self.target_stds)
                ).reshape(y.shape).astype(np.float32)

    @property
    def output_columns(self) -> list[str]:
        return [*self.numeric, *(f"{c}={v}" for c, values in self.categories.items() for v in values)]


MISSING_CATEGORY = "<missing>"
"""The category a missing categorical value becomes under ``impute: mean``."""
