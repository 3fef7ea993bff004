"""The bundled tables: two from scikit-learn (always installed) and two clinical trials from lifelines (extra ``tables``).

| name | rows x columns | risk task | from |
|---|---|---|---|
| table:breast_cancer | 569 x 31 | diagnosis (malignant / benign) | scikit-learn (Wisconsin diagnostic) |
| table:diabetes | 442 x 11 | progression after one year (regression) | scikit-learn (Efron et al. 2004), raw units |
| table:actg175 | 2,139 x 26 | cens: an AIDS-defining event or death | lifelines (AIDS Clinical Trials Group 175) |
| table:gbsg2 | 686 x 10 | cens: recurrence or death | lifelines (German Breast Cancer Study Group 2) |

The lifelines tables are read from the CSV files inside the installed package with genforge's own reader, so
importing lifelines (and pandas) is never needed.

Leaks: ACTG175's follow-up measurements (cd420, cd496, cd820: CD4 counts at weeks 20 and 96, CD8 at week 20;
offtrt: went off treatment; r: whether cd496 was measured) and days (time to the event or to censoring) are
recorded after the baseline and carry the outcome, so the risk task leaves them out (``exclude_from_task``);
they are still generated. GBSG2's time (follow-up) is left out of its task for the same reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from genforge.data.table.read import RawTable, from_arrays, read_csv
from genforge.errors import DataError

INSTALL_TABLES = "pip install 'genforge[tables]' (or pip install lifelines)"
# name -> (target column, columns left out of the risk task, the note `genforge data check` prints about them)
TASKS = {
    "breast_cancer": ("diagnosis", [], "a sanity row: logistic regression separates it at AUROC about 0.99"),
    "diabetes": ("progression", [], "regression: R2 of a linear model about 0.5"),
    "actg175": ("cens", ["cd420", "cd496", "cd820", "offtrt", "r", "days"],
                "risk task leaves out the follow-up columns that leak the outcome: cd420, cd496, cd820 (CD4/CD8 "
                "counts after baseline), offtrt, r (cd496 measured), days (time to event or censoring)"),
    "gbsg2": ("cens", ["time"], "risk task leaves out time (follow-up until the event or censoring)"),
}
NAMES = tuple(TASKS)


def _lifelines_csv(name: str) -> Path:
    spec = importlib.util.find_spec("lifelines")  # locates the package without importing it (and pandas)
    if spec is None or spec.origin is None:
        raise DataError(f"table:{name} ships with lifelines: {INSTALL_TABLES}")
    path = Path(spec.origin).parent / "datasets" / {"actg175": "ACTG175.csv", "gbsg2": "gbsg2.csv"}[name]
    if not path.is_file():
        raise DataError(f"table:{name}: {path} is missing from the installed lifelines; reinstall it")
    return path


def load_bundled(name: str) -> RawTable:
    """The raw cells of a bundled table, named ``table:NAME``."""
    origin = f"table:{name}"
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer  # late: scikit-learn's import takes seconds; only here

        d = load_breast_cancer()
        cols = {str(f): d.data[:, j] for j, f in enumerate(d.feature_names)}
        cols["diagnosis"] = np.array([str(d.target_names[t]) for t in d.target], dtype=object)
        return from_arrays(origin, cols)
    if name == "diabetes":
        from sklearn.datasets import load_diabetes  # late: scikit-learn's import takes seconds; only here

        d = load_diabetes(scaled=False)
        cols = {str(f): d.data[:, j] for j, f in enumerate(d.feature_names)}
        # age, bp and s1..s6 are recorded as whole numbers or with few decimals; keep their text short
        cols = {k: np.array([_short(v) for v in x], dtype=object) for k, x in cols.items()}
        cols["progression"] = np.array([_short(v) for v in d.target], dtype=object)
        return from_arrays(origin, cols)
    if name in ("actg175", "gbsg2"):
        raw = read_csv(_lifelines_csv(name))
        raw.origin = origin
        return raw
    raise DataError(f"unknown bundled table {origin!r}; choose one of {', '.join('table:' + n for n in NAMES)}")


def _short(v: float) -> str:
    """A number as a person writes it: 59 not 59.0, 0.1 not 0.10000000000000001."""
    v = float(v)
    return str(int(v)) if v == int(v) else repr(round(v, 6))
