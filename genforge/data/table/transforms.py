"""Encoding a table for a network and back: mode-specific or quantile normalization, one-hot categories.

Each modelled column becomes one or more *spans* of the encoded row (float (D,)), and the networks read the
list of spans to know which outputs are numbers and which are one-hot groups:

- ``tanh`` (width 1): a number's position inside its mode, alpha = (x - mu_k) / (4 sigma_k), as in CTGAN's
  mode-specific normalization (Xu et al. 2019, section 4.2). Followed by a ``softmax`` span: the mode k, one-hot.
  The modes are the components of a variational Gaussian mixture (scikit-learn's BayesianGaussianMixture with
  a Dirichlet-process prior, weight_concentration_prior 0.001, at most ``max_modes``) that keep a weight above
  0.005; a value's mode is its most probable component, so decoding inverts encoding exactly.
- ``gaussian`` (width 1): quantile normalization, Phi^-1 of the value's empirical CDF (as TabDDPM and the
  Gaussian copula use), piecewise linear between at most 1,000 quantiles of the training values.
- ``softmax`` (width K): a category, one-hot over the schema's categories.

Under differential privacy (``private=``), the quantiles are not the rows' own: each number column's values are
counted in ``PRIVATE_BINS`` equal bins over the schema's [min, max], Gaussian noise is added to every count (one
Gaussian mechanism over all number columns at once: a row adds one to one bin per column, so its L2
sensitivity is sqrt(columns)), and the quantiles are read off the noisy histogram's CDF. The schema (kinds,
ranges, categories, missing shares) is treated as public; the mode-specific normalization, a mixture fitted on
the rows themselves, is refused under DP. The noise multiplier is recorded in the transform; the training's
accountant adds the mechanism to the run's epsilon (genforge/training/privacy.py).

Missing values are their own state: a category column gets one more one-hot slot, a number column a slot in
its mode group (vgm) or a present/missing pair (quantile); the number itself then encodes as 0. A model that
learns the slot regenerates missing values at the rate it saw.

Decoding takes the argmax of every one-hot group and applies the schema's constraints: numbers clipped to
[min, max], whole numbers rounded, decimals rounded to the digits the data was written with, categories only
from the fixed set. The fitted transformer is plain numbers (:meth:`to_json` / :meth:`from_json`), stored with
the model; no pickle.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from genforge.data.table.schema import DISCRETE, NUMERIC, Schema, Table, from_seconds
from genforge.errors import DataError

METHODS = ("vgm", "quantile")
PRIVATE_BINS = 64             # bins of a number column's noisy histogram under differential privacy
MARGINAL_SHARE = 0.2          # the share of the privacy budget (in zCDP's rho) the noisy histograms take
MAX_QUANTILES = 1000
MIN_MODE_WEIGHT = 0.005       # CTGAN's threshold for keeping a mixture component
QUANTILE_EPS = 1e-4           # the empirical CDF is squeezed into [eps, 1 - eps]: Phi^-1 stays within +-3.72
MISSING = None                # a missing cell, as Table holds it


@dataclass(frozen=True)
class Span:
    kind: str      # "tanh", "gaussian" or "softmax"
    start: int
    width: int
    column: str
    role: str      # "value", "mode", "missing" (present/missing pair) or "category"


def _ndtri(u: np.ndarray) -> np.ndarray:
    return torch.special.ndtri(torch.from_numpy(np.asarray(u, dtype=np.float64))).numpy()


def _ndtr(z: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.from_numpy(np.asarray(z, dtype=np.float64))).numpy()


class TableTransformer:
    """The fitted encoding of one table's modelled columns (see the module docstring)."""

    def __init__(self, schema: Schema, method: str, params: dict[str, dict]):
        self.schema, self.method, self.params = schema, method, params
        self.spans: list[Span] = []
        d = 0
        for col in schema.modelled:
            for kind, width, role in self._layout(col.name):
                self.spans.append(Span(kind, d, width, col.name, role))
                d += width
        self.dim = d

    def _layout(self, name: str) -> list[tuple[str, int, str]]:
        p = self.params[name]
        if p["type"] == "category":
            return [("softmax", len(p["labels"]) + p["has_missing"], "category")]
        if p["type"] == "vgm":
            return [("tanh", 1, "value"), ("softmax", len(p["means"]) + p["has_missing"], "mode")]
        return [("gaussian", 1, "value")] + ([("softmax", 2, "missing")] if p["has_missing"] else [])

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, table: Table, method: str = "vgm", max_modes: int = 10, seed: int = 0,
            private: tuple[float, np.random.Generator] | None = None) -> "TableTransformer":
        """Fit on ``table``. ``private``: (noise multiplier, a random stream the caller keeps secret) to draw the
        numbers' quantiles from a noisy histogram (the module docstring); the quantile method only."""
        if method not in METHODS:
            raise DataError(f"table transform {method!r} is not one of {', '.join(METHODS)}")
        if private is not None:
            if method != "quantile":
                raise DataError("under differential privacy the table transform must be 'quantile': mode-specific "
                                "normalization fits a mixture to the rows themselves, outside the accountant")
            return cls._fit_private(table, *private)
        params = {}
        for col in table.schema.modelled:
            v = table.values[col.name]
            if col.kind in DISCRETE:
                has_missing = any(c is MISSING for c in v) or col.missing > 0
                params[col.name] = {"type": "category", "labels": list(col.categories), "has_missing": int(has_missing)}
                continue
            present = v[~np.isnan(v)]
            has_missing = int(bool(np.isnan(v).any()) or col.missing > 0)
            if method == "vgm":
                params[col.name] = {"type": "vgm", **_fit_vgm(present, max_modes, seed), "has_missing": has_missing}
            else:
                params[col.name] = {"type": "quantile", **_fit_quantiles(present), "has_missing": has_missing}
        return cls(table.schema, method, params)

    @classmethod
    def _fit_private(cls, table: Table, sigma: float, rng: np.random.Generator) -> "TableTransformer":
        numbers = [c for c in table.schema.modelled if c.kind not in DISCRETE]
        for col in numbers:
            if col.min is None or col.max is None or not (math.isfinite(col.min) and math.isfinite(col.max)):
                raise DataError(f"column {col.name!r}: differential privacy needs its public range (min and max in "
                                "the schema)")
        scale = sigma * math.sqrt(len(numbers))   # the noise's std: sigma times the histogram's L2 sensitivity
        params = {}
        for col in table.schema.modelled:
            v = table.values[col.name]
            if col.kind in DISCRETE:
                params[col.name] = {"type": "category", "labels": list(col.categories),
                                    "has_missing": int(col.missing > 0)}
                continue
            present = v[~np.isnan(v)]
            edges = np.linspace(col.min, col.max, PRIVATE_BINS + 1) if col.max > col.min else np.array([col.min])
            if len(edges) == 1:
                params[col.name] = {"type": "quantile", "values": [float(col.min)], "levels": [0.5],
                                    "has_missing": int(col.missing > 0)}
                continue
            k = np.clip(np.searchsorted(edges, present, side="right") - 1, 0, PRIVATE_BINS - 1)
            counts = np.bincount(k, minlength=PRIVATE_BINS) + rng.normal(0.0, scale, PRIVATE_BINS)
            # a count is never negative, and every bin keeps a sliver of mass so the CDF rises strictly
            counts = np.clip(counts, 0.0, None) + 1e-3 * max(1.0, scale)
            cdf = np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])
            params[col.name] = {"type": "quantile", "values": [float(a) for a in edges],
                                "levels": [float(a) for a in cdf], "has_missing": int(col.missing > 0)}
        return cls(table.schema, "quantile", params)

    # ------------------------------------------------------------------ encoding
    def encode(self, table: Table, dtype=np.float32) -> np.ndarray:
        """Typed columns -> (N, D) encoded rows."""
        n = len(table)
        out = np.zeros((n, self.dim), dtype=np.float64)
        for span in self.spans:
            p, v = self.params[span.column], table.values[span.column]
            s = slice(span.start, span.start + span.width)
            if p.get("has_missing") == 0 and span.role in ("category", "value") and (
                    any(c is MISSING for c in v) if p["type"] == "category" else bool(np.isnan(v).any())):
                raise DataError(f"column {span.column!r} has missing cells, but the transform has no missing slot "
                                "(its schema's missing share is 0 and the training rows had none): set its missing "
                                "share in the schema")
            if p["type"] == "category":
                index = {label: i for i, label in enumerate(p["labels"])}
                k = np.array([len(p["labels"]) if c is MISSING else index[c] for c in v])
                out[np.arange(n), span.start + k] = 1.0
            elif span.role == "value":
                present = ~np.isnan(v)
                out[present, span.start] = (_vgm_encode(v[present], p)[0] if p["type"] == "vgm"
                                            else _quantile_encode(v[present], p))
            elif span.role == "mode":
                present = ~np.isnan(v)
                k = np.full(n, len(p["means"]))  # the missing slot
                k[present] = _vgm_encode(v[present], p)[1]
                out[np.arange(n), span.start + k] = 1.0
            else:  # present / missing pair
                out[np.arange(n), span.start + np.isnan(v).astype(int)] = 1.0
            assert s.stop <= self.dim
        return out.astype(dtype)

    # ------------------------------------------------------------------ decoding
    def decode(self, x: np.ndarray) -> Table:
        """(N, D) rows (network outputs after their activations, or encodings) -> typed columns within the
        schema's constraints."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"encoded rows must be (N, {self.dim}), got {tuple(x.shape)}")
        n, values = len(x), {}
        by_column: dict[str, dict[str, Span]] = {}
        for span in self.spans:
            by_column.setdefault(span.column, {})[span.role] = span
        for col in self.schema.modelled:
            p, spans = self.params[col.name], by_column[col.name]
            if p["type"] == "category":
                sp = spans["category"]
                k = x[:, sp.start:sp.start + sp.width].argmax(1)
                labels = np.array(list(p["labels"]) + [MISSING], dtype=object)
                values[col.name] = labels[k]
                continue
            z = x[:, spans["value"].start]
            if p["type"] == "vgm":
                sp = spans["mode"]
                k = x[:, sp.start:sp.start + sp.width].argmax(1)
                missing = k == len(p["means"])
                k = np.minimum(k, len(p["means"]) - 1)
                v = z * 4 * np.asarray(p["stds"])[k] + np.asarray(p["means"])[k]
            else:
                v = _quantile_decode(z, p)
                missing = (x[:, spans["missing"].start + 1] > x[:, spans["missing"].start] if "missing" in spans
                           else np.zeros(n, bool))
            v = self.constrain(col, v)
            v[missing] = np.nan
            values[col.name] = v
        return Table(self.schema, values)

    @staticmethod
    def constrain(col, v: np.ndarray) -> np.ndarray:
        """The schema's constraints on a number column: within [min, max], whole, or rounded to its decimals."""
        v = np.clip(v, col.min, col.max)
        if col.kind == "datetime" and not any(f in col.format for f in ("%H", "%I", "%M", "%S", "%p")):
            v = np.round(v / 86400) * 86400  # a date without a time: whole days (UTC midnight), not 23:59:59.9
        elif col.kind in ("integer", "datetime"):
            v = np.round(v)
        elif col.decimals is not None:
            v = np.round(v, col.decimals)
        return np.clip(v, col.min, col.max)  # rounding can step just past a bound written with more digits

    # ------------------------------------------------------------------ stored with the model
    def to_json(self) -> dict:
        return {"method": self.method, "schema": self.schema.to_json(), "params": self.params}

    @classmethod
    def from_json(cls, d: dict) -> "TableTransformer":
        return cls(Schema.from_json(d["schema"]), d["method"], d["params"])

    # ------------------------------------------------------------------ for the models
    def discrete_spans(self) -> list[Span]:
        """The one-hot groups of category columns (CTGAN's conditional vector covers these)."""
        return [s for s in self.spans if s.role == "category"]

    def activation_layout(self) -> list[tuple[str, int]]:
        """[(kind, width), ...] in order: what a network's output head needs."""
        return [(s.kind, s.width) for s in self.spans]


# ----------------------------------------------------------------------------------- differential privacy

def marginal_noise_multiplier(epsilon: float, delta: float, share: float = MARGINAL_SHARE) -> float:
    """The noise multiplier of the numbers' noisy histograms: a Gaussian mechanism of noise multiplier sigma is
    rho = 1 / (2 sigma^2) zero-concentrated DP, and rho-zCDP is (rho + 2 sqrt(rho ln(1/delta)), delta)-DP (Bun and
    Steinke 2016, prop. 1.3); the histograms take ``share`` of the rho that (epsilon, delta) allows. This only
    sizes the noise: the run's accountant (genforge/training/privacy.py) counts the mechanism exactly, in RDP,
    and sizes the rest of the training's noise to what is left."""
    log_delta = math.log(1.0 / delta)
    rho = (math.sqrt(log_delta + epsilon) - math.sqrt(log_delta)) ** 2
    return 1.0 / math.sqrt(2.0 * share * rho)


# ----------------------------------------------------------------------------------- per-column fits

def _fit_vgm(values: np.ndarray, max_modes: int, seed: int) -> dict:
    from sklearn.mixture import BayesianGaussianMixture  # late: scikit-learn's import takes seconds; vgm only

    distinct = np.unique(values)
    k = int(min(max_modes, len(distinct)))
    if k <= 1:
        return {"means": [float(values.mean())], "stds": [1.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the modes found are still usable
        gm = BayesianGaussianMixture(n_components=k, weight_concentration_prior_type="dirichlet_process",
                                     weight_concentration_prior=0.001, max_iter=100, n_init=1, random_state=seed)
        gm.fit(values.reshape(-1, 1))
    keep = gm.weights_ > MIN_MODE_WEIGHT
    means = gm.means_[:, 0][keep]
    stds = np.sqrt(gm.covariances_.reshape(-1))[keep]
    stds = np.maximum(stds, 1e-6 * max(1.0, float(np.abs(values).max())))  # a spike: a tiny width, never 0
    return {"means": [float(m) for m in means], "stds": [float(s) for s in stds]}


def _vgm_encode(v: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, mode) for present values: the most probable component under the fitted mixture's Gaussians."""
    means, stds = np.asarray(p["means"]), np.asarray(p["stds"])
    if not len(v):
        return np.zeros(0), np.zeros(0, int)
    # log N(v | mu_k, sigma_k) (equal weights after pruning: the component that explains the value best)
    logp = -0.5 * ((v[:, None] - means[None]) / stds[None]) ** 2 - np.log(stds[None])
    k = logp.argmax(1)
    return (v - means[k]) / (4 * stds[k]), k


def _fit_quantiles(values: np.ndarray) -> dict:
    n_q = int(min(MAX_QUANTILES, len(values)))
    levels = np.linspace(0.0, 1.0, n_q)
    q = np.quantile(values, levels)
    # ties (whole numbers, spikes): one point per distinct value at the mean of its levels, so that a value
    # maps to one level and back to itself
    uq, inverse = np.unique(q, return_inverse=True)
    ul = np.bincount(inverse, weights=levels) / np.bincount(inverse)
    if len(uq) == 1:
        ul = np.array([0.5])
    return {"values": [float(a) for a in uq], "levels": [float(a) for a in ul]}


def _quantile_encode(v: np.ndarray, p: dict) -> np.ndarray:
    qv, ql = np.asarray(p["values"]), np.asarray(p["levels"])
    u = np.interp(v, qv, ql) if len(qv) > 1 else np.full(len(v), 0.5)
    return _ndtri(QUANTILE_EPS + (1 - 2 * QUANTILE_EPS) * u)


def _quantile_decode(z: np.ndarray, p: dict) -> np.ndarray:
    qv, ql = np.asarray(p["values"]), np.asarray(p["levels"])
    if len(qv) == 1:
        return np.full(len(z), qv[0])
    u = np.clip((_ndtr(z) - QUANTILE_EPS) / (1 - 2 * QUANTILE_EPS), 0.0, 1.0)
    return np.interp(u, ql, qv)


# ----------------------------------------------------------------------------------- rows as text

def format_cell(col, value) -> str:
    """One decoded value as the user's CSV writes it ("" for missing)."""
    if col.kind in DISCRETE:
        return "" if value is MISSING else str(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if col.kind == "datetime":
        return from_seconds(float(value), col.format)
    if col.kind == "integer":
        return str(int(round(float(value))))
    if col.decimals is None:
        return repr(float(value))
    return f"{float(value):.{col.decimals}f}"


def to_text_columns(table: Table) -> dict[str, list[str]]:
    """Every output column of the schema (modelled and constant; ids and drops left out) as text, in file order."""
    n, out = len(table), {}
    for col in table.schema.columns:
        if col.kind == "constant":
            out[col.name] = [col.value or ""] * n
        elif col.kind in NUMERIC or col.kind in DISCRETE:
            out[col.name] = [format_cell(col, v) for v in table.values[col.name]]
    return out
