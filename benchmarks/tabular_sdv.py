"""The SDV side of benchmarks/tabular.py, run by the Python of SDV's own virtual environment (never genforge's).

    SDV_PYTHON benchmarks/tabular_sdv.py fit JOB.json       # train SDV synthesizers, write their rows as CSV
    SDV_PYTHON benchmarks/tabular_sdv.py score JOB.json     # SDMetrics' quality report of every synthetic CSV

JOB.json (written by benchmarks/tabular.py): {"train": CSV, "metadata": {...SDV single-table metadata...},
"synthesizers": ["GaussianCopula", "CTGAN", "TVAE"], "rows": N, "out": DIR, "epochs": null or a cap,
"synthetic": {name: CSV} (score)}. Writes DIR/sdv.json (fit: seconds of training and sampling per
synthesizer) or DIR/sdmetrics.json (score: column shapes and pair trends per CSV). Imports nothing from
genforge: this file only talks to SDV through files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _read(job: dict, path: str):
    import pandas as pd

    kinds = {name: meta["sdtype"] for name, meta in job["metadata"]["columns"].items()}
    dtype = {name: str for name, kind in kinds.items() if kind in ("categorical", "datetime")}
    frame = pd.read_csv(path, dtype=dtype, keep_default_na=True)
    return frame[[c for c in frame.columns if c in kinds]]  # the columns the metadata names (score: modelled ones)


def fit(job: dict) -> None:
    from sdv.metadata import Metadata
    from sdv.single_table import CTGANSynthesizer, GaussianCopulaSynthesizer, TVAESynthesizer

    real = _read(job, job["train"])
    metadata = Metadata.load_from_dict({"tables": {"table": job["metadata"]}, "METADATA_SPEC_VERSION": "V1"})
    out, results = Path(job["out"]), {}
    for name in job["synthesizers"]:
        kwargs = {}
        if job.get("epochs") and name in ("CTGAN", "TVAE"):
            kwargs["epochs"] = int(job["epochs"])
        cls = {"GaussianCopula": GaussianCopulaSynthesizer, "CTGAN": CTGANSynthesizer, "TVAE": TVAESynthesizer}[name]
        synth = cls(metadata, **kwargs)
        t0 = time.perf_counter()
        synth.fit({"table": real})  # SDV 2.x: the data is a dict of table name -> DataFrame, single tables too
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = synth.sample(num_rows=int(job["rows"]))
        rows = rows["table"] if isinstance(rows, dict) else rows
        sample_s = time.perf_counter() - t0
        path = out / f"sdv-{name}.csv"
        rows.to_csv(path, index=False)
        results[name] = {"csv": str(path), "fit_seconds": fit_s, "sample_seconds": sample_s,
                         "rows_per_second": len(rows) / max(sample_s, 1e-9), "epochs": kwargs.get("epochs", "default")}
        print(f"sdv {name}: fit {fit_s:.1f} s, {len(rows)} rows in {sample_s:.2f} s", flush=True)
    (out / "sdv.json").write_text(json.dumps(results, indent=2))


def score(job: dict) -> None:
    from sdmetrics.reports.single_table import QualityReport

    real = _read(job, job["train"])
    results = {}
    for name, path in job["synthetic"].items():
        report = QualityReport()
        report.generate(real, _read(job, path), job["metadata"], verbose=False)
        props = report.get_properties().set_index("Property")["Score"]
        results[name] = {"column_shapes": float(props["Column Shapes"]), "pair_trends": float(props["Column Pair Trends"]),
                         "quality": float(report.get_score())}
    (Path(job["out"]) / "sdmetrics.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    command, job_path = sys.argv[1], sys.argv[2]
    job = json.loads(Path(job_path).read_text())
    {"fit": fit, "score": score}[command](job)
