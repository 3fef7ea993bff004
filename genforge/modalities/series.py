"""Sensor time series: (channels, time) float32 examples in the data's own units, written as npz, CSV or plots.

Sources (genforge.data.series): ucr:NAME (the UCR/UEA sets carried by sktime), tep:[OPTIONS] (the Tennessee
Eastman process simulated by tep-studio), series-csv:FILE and series-npz:FILE (a user's own logs). The file
forms carry a "series-" prefix because the image modality already reads `npz:`; a prefix belongs to one
modality, so a spec alone says which one it is.
"""

from genforge.modalities.modality import Modality

SERIES = Modality(
    name="series",
    sources=("ucr", "tep", "series-csv", "series-npz"),
    example_axes=("c", "t"),
    output_dtype="float32",
    # Samples are written in the data's own units (per-channel normalization undone), which have no common
    # bound across sources: kPa, %, mol %, accelerometer g.
    value_range=(float("-inf"), float("inf")),
    output_controls=(),
    writers=(".npz", ".csv", ".png"),
    evaluator="per-data-set 1-D CNN features (Frechet distance, precision/recall, train-on-synthetic "
              "test-on-real accuracy) plus the discriminative and predictive scores of TimeGAN",
    recipes=("tep-", "ucr-"),
)
