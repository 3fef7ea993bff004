"""Synthetic tables: genforge's four table models against SDV 2.x on the four bundled tables, one ruler for all.

    nice python benchmarks/tabular.py [--budget 60] [--quick] [--tables breast_cancer diabetes actg175 gbsg2]
        [--models tvae ctgan tabddpm copula] [--no-sdv] [--no-dp] [--work DIR] [--no-write]

Per table (train / holdout split of ``load_table``, seed 0): each genforge model is trained through
``genforge.training.train`` for at most ``--budget`` seconds (the issue allows ten minutes) and samples as many
rows as the training split has; in the same run SDV's GaussianCopula, CTGAN and TVAE are fitted at their
defaults (``--quick`` caps CTGAN and TVAE at 100 epochs) in SDV's own virtual environment, which this script
creates the first time (``python -m venv``, then ``pip install torch==2.13.0`` first so that pip does not pull
another torch, then ``sdv`` with ``pandas<3``; SDV is never a genforge dependency). Every synthetic table, SDV's
and genforge's, is scored by ``genforge.metrics.table`` (quality, detection AUROC, train-on-synthetic vs
train-on-real on the holdout, DCR), and SDMetrics' own QualityReport scores the same CSVs: the column shapes and
pair trends must agree with genforge's to 0.01 (the cross-check column gives the largest difference).
With privacy installed, the private recipes (TVAE under DP-SGD, the noisy Gaussian copula) are also trained at epsilon
10 and 1 on ACTG175, ``--dp-runs`` times each (3; their noise comes from the OS, so every run differs), and the
section gives each one's TSTR median beside the same model without DP (``--no-dp`` skips them).

Prints the table and writes it into ``benchmarks/RESULTS.md`` (section ``tabular``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import train_settings, write_section  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402
from genforge.devices import cpu_name  # noqa: E402
from genforge.data.table import load_table  # noqa: E402
from genforge.data.table.schema import DISCRETE, Schema, apply_schema  # noqa: E402
from genforge.data.table.read import read_csv  # noqa: E402
from genforge.data.table.write import write_rows  # noqa: E402
from genforge.io import user_dir  # noqa: E402
from genforge.metrics.table import evaluate_table  # noqa: E402

MARKS = ("<!-- tabular:start -->", "<!-- tabular:end -->")
TABLES = ("breast_cancer", "diabetes", "actg175", "gbsg2")
MODELS = ("tvae", "ctgan", "tabddpm", "copula")
SDV = ("GaussianCopula", "CTGAN", "TVAE")
SDV_RUNNER = ROOT / "benchmarks" / "tabular_sdv.py"


# ----------------------------------------------------------------------------------- SDV's environment

def sdv_python(venv: Path) -> Path:
    """The Python of SDV's virtual environment, created (torch first, then sdv with pandas < 3) when missing."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import sdv, sdmetrics"], capture_output=True).returncode == 0:
        return python
    print(f"creating SDV's virtual environment in {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)   # first: otherwise sdv's resolver may fetch another torch
    subprocess.run(pip + ["sdv>=2,<3", "pandas<3"], check=True)
    return python


def sdv_metadata(schema: Schema, constants: bool = True) -> dict:
    """SDV single-table metadata for the columns genforge writes (ids and drops are not written). Without
    ``constants``: the modelled columns only, the ones genforge's quality scores (for SDMetrics' report)."""
    cols = {}
    for c in schema.columns:
        if c.kind in ("continuous", "integer"):
            cols[c.name] = {"sdtype": "numerical"}
        elif c.kind == "datetime":
            cols[c.name] = {"sdtype": "datetime", "datetime_format": c.format}
        elif c.kind in DISCRETE or (c.kind == "constant" and constants):
            cols[c.name] = {"sdtype": "categorical"}
    return {"columns": cols}


def run_sdv(python: Path, job: dict, command: str, work: Path) -> dict:
    path = work / f"job-{command}.json"
    path.write_text(json.dumps(job))
    subprocess.run([str(python), str(SDV_RUNNER), command, str(path)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return json.loads((work / ("sdv.json" if command == "fit" else "sdmetrics.json")).read_text())


# ----------------------------------------------------------------------------------- genforge's side

def train_genforge(table: str, model: str, budget: float, run: Path, dp_epsilon: float = 0.0,
                   open_steps: bool = False) -> tuple[float, object]:
    """Train the bundled recipe ``table-MODEL`` on ``table:TABLE`` for its own steps, at most ``budget`` seconds
    (``open_steps``: for the whole budget, its step count left open, except under DP, whose noise is sized for
    the recipe's steps); (seconds, loaded model)."""
    import genforge
    from genforge.config import load_config
    from genforge.training import train

    # DP runs keep the recipe's step count (the accountant's), and so does the copula (its fit is one step)
    fixed = bool(dp_epsilon) or model == "copula" or not open_steps
    overrides = [f"data=table:{table}", *train_settings(budget, evaluate=True, recipe_steps=fixed)]
    if dp_epsilon:
        overrides.append(f"dp_epsilon={dp_epsilon}")
    cfg = load_config(f"table-{model}", overrides)
    t0 = time.perf_counter()
    train(cfg, run, quiet=True)
    return time.perf_counter() - t0, genforge.load(run)


def read_rows(path: Path, schema: Schema):
    """A synthetic CSV as a Table of ``schema`` (bounds left open: a peer may step outside them)."""
    loose = Schema.from_json(schema.to_json())
    for c in loose.columns:
        c.min = c.max = None
    return apply_schema(read_csv(path), loose)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per genforge model (issue: <= 600)")
    ap.add_argument("--quick", action="store_true", help="cap SDV's CTGAN and TVAE at 100 epochs")
    ap.add_argument("--open-steps", action="store_true",
                    help="train every genforge model for the whole --budget (default: its recipe's max_steps, "
                         "at most --budget seconds; longer runs copy rows of the small tables)")
    ap.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--no-sdv", action="store_true")
    ap.add_argument("--no-dp", action="store_true")
    ap.add_argument("--dp-runs", type=int, default=3,
                    help="private models trained this many times at each epsilon (their noise is never seeded)")
    ap.add_argument("--venv", type=Path, default=user_dir("cache") / "sdv-venv")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    print_machine()
    # one thread for every system: these networks are small, and on a shared machine a second thread spends more
    # in synchronization than it computes (the table recipes say num_threads: 1; SDV gets OMP_NUM_THREADS=1)
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="genforge-tabular-"))
    python = None if args.no_sdv else sdv_python(args.venv)
    rows, checks = [], []
    for table in args.tables:
        splits = load_table(f"table:{table}", val_fraction=0.1, test_fraction=0.2, seed=0)  # the recipes' split
        schema, tdir = splits.schema, work / table
        tdir.mkdir(parents=True, exist_ok=True)
        train_csv = write_rows(tdir / "train.csv", splits.train)
        real = read_rows(train_csv, schema)
        synthetic: dict[str, tuple[Path, dict]] = {}
        for model in args.models:
            fit_s, m = train_genforge(table, model, args.budget, tdir / f"run-{model}", open_steps=args.open_steps)
            t0 = time.perf_counter()
            out = m.sample(len(splits.train), seed=0)
            sample_s = time.perf_counter() - t0
            path = write_rows(tdir / f"genforge-{model}.csv", m.output.table(out.x))
            synthetic[f"genforge {model}"] = (path, {"fit_seconds": fit_s, "sample_seconds": sample_s})
            print(f"{table}: genforge {model}: {fit_s:.1f} s training, {len(splits.train)} rows in {sample_s:.2f} s",
                  flush=True)
        private = [m for m in ("tvae", "copula") if m in args.models] if table == "actg175" and not args.no_dp else []
        for model in private:  # the private recipes (table-dp-tvae, table-dp-copula) at epsilon 10 and 1
            for eps in (10.0, 1.0):
                # the privacy noise comes from the OS, not from the seed (genforge/training/privacy.py), so
                # every private run differs: each is trained dp_runs times and every run is a row
                for k in range(args.dp_runs):
                    tag = f"{model}-dp{eps:g}" + (f"-run{k + 1}" if args.dp_runs > 1 else "")
                    fit_s, m = train_genforge(table, f"dp-{model}", args.budget, tdir / f"run-{tag}", dp_epsilon=eps)
                    t0 = time.perf_counter()
                    out = m.sample(len(splits.train), seed=0)
                    sample_s = time.perf_counter() - t0
                    spent = (m.meta.get("privacy") or {}).get("epsilon")
                    path = write_rows(tdir / f"genforge-{tag}.csv", m.output.table(out.x))
                    name = f"genforge {model}, DP eps {eps:g}" + (f", run {k + 1}" if args.dp_runs > 1 else "")
                    synthetic[name] = (path, {"fit_seconds": fit_s, "sample_seconds": sample_s,
                                              "epsilon_spent": spent})
        if python is not None:
            job = {"train": str(train_csv), "metadata": sdv_metadata(schema), "synthesizers": list(SDV),
                   "rows": len(splits.train), "out": str(tdir), "epochs": 100 if args.quick else None}
            for name, r in run_sdv(python, job, "fit", tdir).items():
                synthetic[f"SDV {name}"] = (Path(r["csv"]), r)
            job["synthetic"] = {name: str(p) for name, (p, _) in synthetic.items()}
            job["metadata"] = sdv_metadata(schema, constants=False)
            sdm = run_sdv(python, job, "score", tdir)
        else:
            sdm = {}
        for name, (path, timing) in synthetic.items():
            syn = read_rows(path, schema)
            s = evaluate_table(syn, real, splits.test)
            diff = None
            if name in sdm:
                diff = max(abs(s["column_shapes"] - sdm[name]["column_shapes"]), abs(s["pair_trends"] - sdm[name]["pair_trends"]))
                checks.append(diff)
            rows.append({"table": table, "system": name, **{k: s[k] for k in ("quality", "column_shapes", "pair_trends",
                                                                               "detection_auroc", "dcr_synthetic_median",
                                                                               "dcr_holdout_median")},
                         "tstr": s.get("tstr"), "trtr": s.get("trtr"), "metric": s.get("task_metric"),
                         "fit_seconds": timing["fit_seconds"],
                         "rows_per_second": len(syn) / max(timing["sample_seconds"], 1e-9),
                         "epsilon": timing.get("epsilon_spent"), "sdmetrics_diff": diff})
            print(json.dumps(rows[-1]), flush=True)
        if not args.no_write:  # after each table: a run cut short still leaves the tables it finished
            write_section(ROOT / "benchmarks/RESULTS.md", render(rows, checks, args), MARKS)
    section = render(rows, checks, args)
    print(section)
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", section, MARKS)
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")


def render(rows: list[dict], checks: list[float], args) -> str:
    cmd = ("nice python benchmarks/tabular.py" + (f" --budget {args.budget:g}") + (" --quick" if args.quick else "")
           + (" --open-steps" if args.open_steps else "") + (f" --dp-runs {args.dp_runs}" if args.dp_runs != 3 else ""))
    lines = [MARKS[0], "## Synthetic tables: genforge against SDV 2.x (benchmarks/tabular.py)", "",
             f"`{cmd}` on {cpu_name()}, {time.strftime('%Y-%m-%d')}, one thread per system; each genforge "
             + (f"model trained for the whole {args.budget:g} s (--open-steps)" if args.open_steps else
                f"model trained for its recipe's max_steps, at most {args.budget:g} s") + "; SDV at its defaults"
             + (" (CTGAN and TVAE capped at 100 epochs: --quick)" if args.quick else "") + ". Rows sampled: as many as "
             "the training split. Quality = mean of column shapes and pair trends (SDMetrics' definition), scored by "
             "genforge on the same CSVs; TSTR / TRTR: the risk task (AUROC, or R2 for diabetes) on the real holdout, "
             "trained on synthetic / real rows; DCR: median distance to the closest training row (synthetic vs the "
             "real holdout's).", "",
             "| table | system | quality | shapes | trends | detection AUROC | TSTR | TRTR | DCR syn / holdout | "
             "train s | rows/s | vs SDMetrics |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sys_name = r["system"] + (f" (spent {r['epsilon']:.2f})" if r.get("epsilon") is not None else "")
        tstr = "" if r["tstr"] is None else f"{r['tstr']:.3f}"
        trtr = "" if r["trtr"] is None else f"{r['trtr']:.3f}"
        diff = "" if r["sdmetrics_diff"] is None else f"{r['sdmetrics_diff']:.4f}"
        lines.append(f"| {r['table']} | {sys_name} | {r['quality']:.3f} | {r['column_shapes']:.3f} | {r['pair_trends']:.3f} "
                     f"| {r['detection_auroc']:.3f} | {tstr} | {trtr} | {r['dcr_synthetic_median']:.3f} / "
                     f"{r['dcr_holdout_median']:.3f} | {r['fit_seconds']:.1f} | {r['rows_per_second']:.0f} | {diff} |")
    if checks:
        lines += ["", f"Cross-check: genforge's column shapes and pair trends against SDMetrics' QualityReport on the "
                      f"same {len(checks)} CSVs: largest difference {max(checks):.4f} (target 0.01)."]
    best = {}
    for r in rows:
        side = "genforge" if r["system"].startswith("genforge") and "DP" not in r["system"] else (
            "SDV" if r["system"].startswith("SDV") else None)
        if side:
            key = (r["table"], side)
            best[key] = max(best.get(key, 0.0), r["quality"])
    wins = [t for t in {t for t, _ in best} if best.get((t, "genforge"), 0) > best.get((t, "SDV"), 1)]
    if any(s == "SDV" for _, s in best):
        lines += ["", "Best quality per table: " + "; ".join(
            f"{t}: genforge {best.get((t, 'genforge'), float('nan')):.3f}, SDV {best.get((t, 'SDV'), float('nan')):.3f}"
            for t in dict.fromkeys(r["table"] for r in rows)) + f". genforge ahead on {len(wins)} of "
            f"{len({t for t, _ in best})} tables."]
    private = {}  # (model, epsilon) -> the TSTR of each private run, beside the same model's without DP
    for r in rows:
        if ", DP eps " in r["system"] and r["tstr"] is not None:
            model, eps = r["system"].split(", DP eps ")[0], r["system"].split(", DP eps ")[1].split(",")[0]
            private.setdefault((r["table"], model, eps), []).append(r["tstr"])
    notes = []
    for (table, model, eps), runs in private.items():
        plain = next((r["tstr"] for r in rows if r["table"] == table and r["system"] == model), None)
        runs, median = sorted(runs), statistics.median(runs)
        notes.append(f"- {table}, {model} at epsilon {eps}: TSTR median {median:.3f} over {len(runs)} runs "
                     f"({', '.join(f'{v:.3f}' for v in runs)})"
                     + (f"; without DP {plain:.3f}, so the median is {plain - median:.3f} below" if plain is not None
                        else ""))
    if notes:
        lines += ["", "Private runs (the train-on-synthetic AUROC of each):", "", *notes]
    lines.append(MARKS[1])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
