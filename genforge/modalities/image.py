"""Images: (channels, height, width) pixels, written as uint8 PNG grids, PNG folders or npz."""

from genforge import controls
from genforge.modalities.modality import Modality

IMAGE = Modality(
    name="image",
    sources=("mnist5k", "fashion-mnist", "idx", "npz", "folder"),
    example_axes=("c", "h", "w"),
    output_dtype="uint8",
    value_range=(0, 255),
    output_controls=(controls.SIZE, controls.RESAMPLE),
    writers=(".png", ".npz", ""),
    evaluator="classifier features (FID, precision/recall, IS, class match) from a shipped, hashed CNN",
    cluster_view="pixels",
    recipes=("mnist5k-", "fashion-"),
)
