"""Sample quality of every recipe at a fixed training budget, beside real data, in the evaluator's features.

    python benchmarks/quality.py                       # the Fashion-MNIST recipes, 10 minutes each
    python benchmarks/quality.py --budget-seconds 120 --recipes mnist5k-dcgan ... --section quality

Each recipe is trained with ``genforge.training.train`` for the budget (``max_seconds``; its ``max_steps`` is
lifted so the clock decides), then ``genforge.metrics.evaluate`` scores ``--n`` samples against the test
split: FID, KID, precision, recall, density, coverage, classifier IS and class entropy; class match and CAS
for conditional recipes; the importance-weighted NLL on the test split for VAEs with a Bernoulli decoder.
Each data set's table ends with the real-data reference row (a train subset of the same size against the
same test split), so every number reads against what real images score. `gan-mlp` (the reference design's
network) is the first row of the run. Unconditional diffusion recipes are also sampled with the full-step
chain, with 20 DDIM steps and with 20 DPM-Solver++(2M) steps on ``--ddim-n`` samples each, for the DDIM
target; conditional (and cluster-guided) diffusion recipes get a guidance sweep on as many samples. The
issue's targets are checked from the measured rows and printed as met or not met.

Prints the tables and writes them into ``benchmarks/RESULTS.md`` between the ``--section`` markers.
"""

from __future__ import annotations

import argparse
import json
import sys
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, train_settings, write_section  # noqa: E402
from benchmarks.machine import describe, print_machine  # noqa: E402
import genforge  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.data import load_splits, to_tensor  # noqa: E402
from genforge.generation import sample  # noqa: E402
from genforge.metrics import evaluate  # noqa: E402
from genforge.models import diffusion, vae  # noqa: E402
from genforge.training import train  # noqa: E402
from genforge.training.loop import set_threads  # noqa: E402

REFERENCE = "gan-mlp"  # the reference design's own network: the first row of every run
DEFAULT_RECIPES = ["fashion-gan-mlp", "fashion-vae-mlp", "fashion-dcgan", "fashion-sngan", "fashion-wgan-gp",
                   "fashion-vae-conv", "fashion-ddpm", "fashion-ddpm-clusters", "fashion-cvae-conv", "fashion-cdcgan",
                   "fashion-acgan", "fashion-cddpm"]
NLL_IMAGES, NLL_K = 1000, 100  # test images and importance samples of the VAE NLL estimate


def run_recipe(recipe: Path, budget: float, runs: Path, n: int, seed: int, ddim_n: int) -> dict:
    cfg = load_config(recipe, train_settings(budget, evaluate=True))
    run = runs / recipe.stem
    if run.exists():  # a run this script started and did not finish: its row was never written
        shutil.rmtree(run)
    t0 = time.perf_counter()
    result = train(cfg, run, quiet=True)
    train_s = time.perf_counter() - t0
    model = genforge.load(run)
    scored = evaluate(model, n=n, seed=seed)
    per_step = cfg.batch_size * (cfg.d_steps if model.family == "gan" else 1)  # real images read per step
    row = {"recipe": recipe.stem, "model": cfg.model, "data": cfg.data, "steps": result.step,
           "train_seconds": train_s, "images_per_s": result.step * per_step / train_s, "result": scored,
           "nll": vae_nll(model, cfg, seed) if model.family == "vae" and cfg.recon_loss == "bce" else None,
           "ddim": ddim_check(model, run, ddim_n, seed) if model.family == "diffusion" and not model.num_classes
           else None,
           "guidance": guidance_sweep(model, run, ddim_n, seed) if model.family == "diffusion" and model.num_classes
           else None}
    return row


def vae_nll(model, cfg, seed: int) -> dict:
    """-log p(x) on NLL_IMAGES test images: the IWAE bound with NLL_K samples (vae.iwae_nll), nats and bits/dim."""
    splits = load_splits(cfg.data, image_size=model.image_shape[1], channels=model.image_shape[0])
    idx = np.random.default_rng(seed).choice(len(splits.test), min(NLL_IMAGES, len(splits.test)), replace=False)
    x = to_tensor(splits.test.x[np.sort(idx)], vae.VALUE_RANGE)
    y = torch.as_tensor(splits.test.y[np.sort(idx)]) if model.num_classes else None
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        nll = torch.cat([vae.iwae_nll(model.nets, x[i:i + 100], None if y is None else y[i:i + 100], k=NLL_K,
                                      noise=noise) for i in range(0, len(x), 100)])
    return {"nats": nll.mean().item(), "bits_per_dim": vae.bits_per_dim(nll, model.image_shape).mean().item(),
            "images": len(x), "k": NLL_K}


def ddim_check(model, run: Path, n: int, seed: int, old: dict | None = None) -> dict:
    """FID of the full-step chain (1000 DDIM steps), of 20 DDIM steps and of 20 DPM-Solver++(2M) steps, from
    the same n latents. The full chain's samples are kept in the run directory and reused when present (they
    take ten minutes), so a re-check after a sampler change costs only the 20-step samples: ``old`` is the
    earlier check, whose timing of the chain is kept."""
    out = {"n": n}
    for key, steps, sampler in ((str(diffusion.T), diffusion.T, "ddim"), ("20", 20, "ddim"),
                                ("20_dpm++2m", 20, "dpm++2m")):
        npz = run / f"samples-{steps}-steps{'' if sampler == 'ddim' else '-' + sampler}.npz"
        t0 = time.perf_counter()
        if steps == diffusion.T and npz.is_file() and old and old["n"] == n:
            out[f"seconds_{key}"] = old[f"seconds_{key}"]  # the chain's samples from the earlier call
        else:
            np.savez(npz, x=sample(model, n, seed=seed, steps=steps, sampler=sampler).x)
            out[f"seconds_{key}"] = time.perf_counter() - t0
        out[f"fid_{key}"] = evaluate(str(npz), data=model.meta["data"], n=n, seed=seed, with_cas=False,
                                     progress=False)["rows"]["samples"]["fid"]
    out["ratio"] = out["fid_20"] / out[f"fid_{diffusion.T}"]
    out["ratio_dpm++2m"] = out["fid_20_dpm++2m"] / out[f"fid_{diffusion.T}"]
    return out


GUIDANCE = (1.0, 2.0, 3.0, 4.0)


def guidance_sweep(model, run: Path, n: int, seed: int) -> dict:
    """Conditional diffusion: FID and class match of n samples (every class in turn) at each guidance scale,
    with the recipe's sampler and steps."""
    out = {"n": n, "sampler": model.sampling_defaults["sampler"], "steps": model.sampling_defaults["steps"]}
    for g in GUIDANCE:
        s = sample(model, n, seed=seed, guidance=g)
        labels = {"y": s.y} if model.cluster_prior is None else {}  # clusters are not the evaluator's classes
        np.savez(npz := run / f"samples-guidance-{g:g}.npz", x=s.x, **labels)
        res = evaluate(str(npz), data=model.meta["data"], n=n, seed=seed, with_cas=False,
                       progress=False)["rows"]["samples"]
        out[f"{g:g}"] = {"fid": res["fid"], "class_match": res.get("class_match")}
    return out


def _cells(row: dict) -> list[str]:
    return [f"{row['fid']:.2f}", f"{row['kid']:.3g} ± {row['kid_std']:.2g}", f"{row['precision']:.3f}",
            f"{row['recall']:.3f}", f"{row['density']:.3f}", f"{row['coverage']:.3f}", f"{row['is']:.2f}",
            f"{row['class_entropy']:.3f}"]


def tables(rows: list[dict]) -> list[str]:
    """One markdown table per data set: the recipes, then the real-data row."""
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        group = [r for r in rows if r["data"] == data]
        first = group[0]["result"]
        ev = first["evaluator"]
        lines += [f"### {data}: test split of {first['reference']['size']} images", "",
                  f"Evaluator `{ev['name']}` (sha256 `{ev['weights_sha256'][:16]}`, test accuracy "
                  f"{100 * ev['test_accuracy']:.2f}%).", "",
                  "| recipe | steps | images/s | n | FID | KID ± std | precision | recall | density | coverage | IS "
                  "| class H | class match | CAS (real) | NLL nats (bits/dim) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            res, s = r["result"], r["result"]["rows"]["samples"]
            cas = res.get("cas")
            cas_cell = f"{100 * cas['generated']:.1f}% ({100 * cas['real']:.1f}%)" if cas else "-"
            match = f"{100 * s['class_match']:.1f}%" if s.get("class_match") is not None else "-"
            nll = f"{r['nll']['nats']:.1f} ({r['nll']['bits_per_dim']:.3f})" if r.get("nll") else "-"
            lines.append(f"| {r['recipe']} | {r['steps']} | {r['images_per_s']:.0f} | {s['n']} | "
                         + " | ".join(_cells(s)) + f" | {match} | {cas_cell} | {nll} |")
        real = first["rows"]["real"]
        lines.append(f"| **real data** (train subset vs test) | - | - | {real['n']} | " + " | ".join(_cells(real))
                     + f" | - | {100 * ev['test_accuracy']:.1f}% | - |")
        lines.append("")
    return lines


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, checked against this run's rows (per data set)."""
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        fid = {r["recipe"]: r["result"]["rows"]["samples"]["fid"] for r in rows if r["data"] == data}
        refs = [r for r in rows if r["data"] == data and r["model"] in ("gan-mlp", "vae-mlp")]
        uncond = [r for r in rows if r["data"] == data and r["result"]["rows"]["samples"].get("class_match") is None]
        cond = [r for r in rows if r["data"] == data and r["result"]["rows"]["samples"].get("class_match") is not None]
        if refs and uncond:
            ref = min(refs, key=lambda r: fid[r["recipe"]])
            best = min(uncond, key=lambda r: fid[r["recipe"]])
            ratio = fid[best["recipe"]] / fid[ref["recipe"]]
            recall = best["result"]["rows"]["samples"]["recall"]
            ok = ratio <= 0.2 and recall >= 0.5
            lines.append(f"- {data}: best unconditional `{best['recipe']}` FID {fid[best['recipe']]:.2f} = "
                         f"{ratio:.2f} x the better reference network (`{ref['recipe']}`, FID "
                         f"{fid[ref['recipe']]:.2f}); recall {recall:.3f}. Target (<= 0.20 x, recall >= 0.5): "
                         f"**{'met' if ok else 'not met'}**")
        if cond:
            best = max(cond, key=lambda r: r["result"]["rows"]["samples"]["class_match"])
            m = best["result"]["rows"]["samples"]["class_match"]
            lines.append(f"- {data}: best conditional `{best['recipe']}` puts {100 * m:.1f}% of its samples in the "
                         f"class asked for. Target (>= 85%): **{'met' if m >= 0.85 else 'not met'}**")
        for r in rows:
            if r["data"] == data and r.get("ddim"):
                d = r["ddim"]
                lines.append(f"- {data}: `{r['recipe']}` FID on {d['n']} samples: {diffusion.T}-step chain "
                             f"{d[f'fid_{diffusion.T}']:.2f} ({d[f'seconds_{diffusion.T}']:.0f} s to sample), 20 DDIM steps "
                             f"{d['fid_20']:.2f} ({d['seconds_20']:.1f} s) (ratio {d['ratio']:.2f}; "
                             f"target within 20%: **{'met' if abs(d['ratio'] - 1) <= 0.2 else 'not met'}**)"
                             + (f"; 20 DPM-Solver++(2M) steps {d['fid_20_dpm++2m']:.2f} ({d['seconds_20_dpm++2m']:.1f} s, "
                                f"ratio {d['ratio_dpm++2m']:.2f}: "
                                f"{'within' if abs(d['ratio_dpm++2m'] - 1) <= 0.2 else 'not within'} 20%)"
                                if "ratio_dpm++2m" in d else ""))
            if r["data"] == data and r.get("guidance"):
                g = r["guidance"]
                lines.append(f"- {data}: `{r['recipe']}` by guidance scale ({g['n']} samples, {g['steps']} "
                             f"{g['sampler']} steps): " + ", ".join(
                                 f"{k}: FID {v['fid']:.2f}" + (f", class match {100 * v['class_match']:.1f}%"
                                                               if v.get("class_match") is not None else "")
                                 for k, v in g.items() if isinstance(v, dict)))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-seconds", type=float, default=600, help="training seconds per recipe (default 600)")
    ap.add_argument("--recipes", nargs="*", default=DEFAULT_RECIPES,
                    help="recipe names (default: the Fashion-MNIST recipes of the 10-minute benchmark)")
    ap.add_argument("--ddim-n", type=int, default=1000,
                    help="samples for the full-step vs 20-step DDIM comparison of diffusion recipes (default 1000)")
    ap.add_argument("--section", default="quality-fashion",
                    help="RESULTS.md section to replace (markers <!-- NAME:start/end -->; default quality-fashion)")
    ap.add_argument("--n", type=int, default=10000, help="samples scored per recipe (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="sampling and subset seed (default 0)")
    ap.add_argument("--runs", help="keep the run directories here (default: a temporary directory)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--reuse", action="store_true",
                    help="with --runs: take a recipe's row from DIR/RECIPE.row.json when an earlier call wrote it "
                         "(so recipes can be run one call at a time, between other jobs, and tabled together)")
    args = ap.parse_args()
    set_threads(0)  # before the peak is measured, so it is measured on the threads training gets
    facts = print_machine()  # fp32 matmul peak and CPU flags first, so the figures can be read against them
    recipes = sorted(ROOT.glob("genforge/recipes/*.yaml"))
    if args.recipes:
        unknown = sorted(set(args.recipes) - {r.stem for r in recipes})
        if unknown:
            sys.exit(f"quality.py: unknown recipes {unknown}; see genforge/recipes/")
        recipes = sorted((r for r in recipes if r.stem in args.recipes),
                         key=lambda r: (REFERENCE not in r.stem, args.recipes.index(r.stem)))
    tmp = tempfile.TemporaryDirectory() if not args.runs else None
    runs = Path(args.runs) if args.runs else Path(tmp.name)

    rows = []
    for recipe in recipes:
        print(f"== {recipe.stem}: training {args.budget_seconds:g} s, then scoring {args.n} samples", flush=True)
        runs.mkdir(parents=True, exist_ok=True)
        row_file = runs / f"{recipe.stem}.row.json"
        if args.reuse and row_file.is_file():
            rows.append(row := json.loads(row_file.read_text()))
            print(f"{recipe.stem}: row taken from {row_file}", flush=True)
            if row.get("ddim") and "ratio_dpm++2m" not in row["ddim"]:  # a row from before the DPM-Solver check
                row["ddim"] = ddim_check(genforge.load(runs / recipe.stem), runs / recipe.stem, args.ddim_n, args.seed,
                                         old=row["ddim"])
                row_file.write_text(json.dumps(row, indent=1))
            continue
        try:
            row = run_recipe(recipe, args.budget_seconds, runs, args.n, args.seed, args.ddim_n)
        except Exception as e:  # e.g. fashion-mnist not installed: say so, keep going
            print(f"{recipe.stem}: skipped ({type(e).__name__}: {e})", flush=True)
            continue
        rows.append(row)
        row_file.write_text(json.dumps(row, indent=1))
        s = row["result"]["rows"]["samples"]
        print(f"{recipe.stem}: {row['steps']} steps, {row['images_per_s']:.0f} images/s; FID {s['fid']:.2f}, KID {s['kid']:.3g}, precision "
              f"{s['precision']:.3f}, recall {s['recall']:.3f}, density {s['density']:.3f}, coverage "
              f"{s['coverage']:.3f}" + (f", CAS {row['result']['cas']['generated']:.3f}" if row["result"]["cas"]
                                        else "")
              + (f", NLL {row['nll']['nats']:.1f} nats" if row["nll"] else "")
              + (f", DDIM-20/full FID {row['ddim']['ratio']:.2f}" if row["ddim"] else ""), flush=True)
    if not rows:
        sys.exit("quality.py: no recipe could be scored")

    command = command_line("quality.py")
    marks = (f"<!-- {args.section}:start -->", f"<!-- {args.section}:end -->")
    lines = [marks[0], f"## Sample quality at a fixed training budget of {args.budget_seconds:g} s "
             "(`benchmarks/quality.py`)", "",
             f"- command: `{command}`",
             f"- machine: {describe(facts)} (the steps a recipe reaches in the budget depend on the machine's speed "
             "and on what else runs on it)",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- each recipe trained for {args.budget_seconds:g} s of wall clock (`max_seconds`, `max_steps` lifted), "
             f"then {args.n} samples (seed {args.seed}) scored against the test split with `genforge eval`'s code "
             "(`genforge.metrics.evaluate`), on the release weights `genforge.load` picks (best, else last checkpoint)",
             "- features: the penultimate layer of genforge's frozen evaluator for the data set; scores from "
             "different evaluators (hashes) are not comparable",
             "- precision/recall: k=3 (Kynkaanniemi et al. 2019); density/coverage: k=5 (Naeem et al. 2020), on "
             "equal-sized sets (the smaller of samples and test split); KID: polynomial kernel, 100 subsets of "
             "at most 1,000; IS and class H (entropy of the predicted-class histogram, max ln 10 = 2.303) use "
             "the evaluator as classifier; CAS (conditional recipes): the evaluator's network and recipe trained on "
             "the samples only, tested on the real test split, with the evaluator itself (trained on real data) "
             "in brackets",
             "- real data row: a random train subset of the same size (at most the whole train split) against "
             "the test split. The evaluator was trained on that train split, so this row is what a model that "
             "reproduced its training images exactly would score",
             f"- images/s: real images read per second over the whole budget (set-up and the recipes' own "
             "validation scoring included); NLL (VAEs with a Bernoulli decoder): the importance-weighted bound "
             f"(Burda et al. 2016) with k={NLL_K} on {NLL_IMAGES} test images, in nats per image (bits per "
             "dimension); on grayscale pixels, not binarized ones, so not comparable with binarized-MNIST NLLs",
             "", "Targets, checked from the rows below:", ""]
    lines += targets(rows) + [""]
    lines += tables(rows)
    lines.append(marks[1])
    section = "\n".join(lines)
    print("\n" + section)
    if args.runs:
        (runs / "quality.json").write_text(json.dumps([{k: v for k, v in r.items()} for r in rows], indent=1))
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", section, marks)
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")


if __name__ == "__main__":
    main()
