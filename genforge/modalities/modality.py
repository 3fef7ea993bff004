"""The declaration of a modality (see :mod:`genforge.modalities`)."""

from __future__ import annotations

from dataclasses import dataclass

from genforge.controls import Control


@dataclass(frozen=True)
class Modality:
    name: str
    sources: tuple[str, ...]          # data spec prefixes ("mnist5k", "folder", ...)
    example_axes: tuple[str, ...]     # the axes of one example as a model sees it, e.g. ("c", "h", "w")
    output_dtype: str                 # the dtype of a sample as written, e.g. "uint8"
    value_range: tuple[float, float]  # the values of a written sample
    output_controls: tuple[Control, ...]
    writers: tuple[str, ...]          # output suffixes ("" is a directory of single files)
    evaluator: str                    # how genforge eval scores it
    recipes: tuple[str, ...]          # name prefixes of the bundled recipes for it
    cluster_view: str = ""            # what cluster guidance k-means-clusters (genforge.data.clusters.VIEWS); ""
                                      # none: a model of this modality cannot train on clusters
