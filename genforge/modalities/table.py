"""Tables: rows of mixed columns (numbers, categories, dates, missing values), written as CSV, Parquet or npz.

Sources (genforge.data.table): csv:FILE, parquet:FILE and the bundled table:NAME (breast_cancer, diabetes,
actg175, gbsg2). One example is an encoded row (d,): each column's spans of the fitted transform
(mode-specific or quantile normalization, one-hot categories), which the model file stores; written rows are
in the user's units and labels, within the schema's constraints.
"""

from genforge.modalities.modality import Modality

TABLE = Modality(
    name="table",
    sources=("csv", "parquet", "table"),
    example_axes=("d",),
    output_dtype="rows",  # a structured array: one field per column (numbers float64, labels text)
    value_range=(float("-inf"), float("inf")),
    output_controls=(),
    writers=(".csv", ".parquet", ".npz"),
    evaluator="SDMetrics-style column shapes and pair trends, detection AUROC, train-on-synthetic vs "
              "train-on-real on a holdout, distance to the closest training row (genforge.metrics.table)",
    recipes=("table-",),
)
