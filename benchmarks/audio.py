"""Audio measured (issue #17): the evaluators and their real-data rows, every audio recipe on spoken digits and
drums, speech enhancement against the classical baselines, and image-to-speech agreement, in one run.

    python benchmarks/audio.py --budget 600            # the issue's protocol: 10 minutes of training per model
    python benchmarks/audio.py --budget 60 --only enhance,speech --threads 1   # beside another run on a 2-core box

Needs audio:spoken-digits made first (genforge data make spoken-digits), Debian's hydrogen-drumkits and
asterisk-core-sounds-en-wav. Every model trains for --budget seconds of wall time on this machine (CPU), then:

- recipes: --n samples (default 500) drawn with seed 0 and turned into waveforms; the audio evaluator of the
  recipe's data gives IS, Frechet distance against the test split, precision/recall and (conditional
  recipes) class match; "x real time" is seconds of audio generated per second of sampling compute; for a
  spectrogram recipe, "round trip" scores the real test clips sent through its own mel picture and
  Griffin-Lim: the most its samples can score.
- enhancement: the mask U-Net denoiser trained --budget seconds on the train prompts, against spectral
  subtraction and scipy.signal.wiener (window chosen on the validation prompts), on every test prompt mixed
  with white noise, drum hits and babble at 0, 5 and 10 dB: SI-SDR, its improvement, STOI.
- speech: the image-to-speech model trained --budget seconds; agreement of the digit evaluator's class of
  its speech with the label of every mnist5k test image (500, 50 of each digit), as the model samples (from
  its neighbour bank) and from its prior.

Prints each table and writes them into benchmarks/RESULTS.md (with the machine, date and command).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, write_section  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402
from genforge.devices import cpu_name  # noqa: E402
from genforge.apps import enhance  # noqa: E402
from genforge.apps import image_to_speech as i2s  # noqa: E402
from genforge.data import load_splits  # noqa: E402
from genforge.data.audio import load_audio  # noqa: E402
from genforge.metrics.audio import format_audio_table, get_audio_evaluator, real_rows  # noqa: E402

PARTS = ("evaluators", "recipes", "enhance", "speech")


def evaluators_part() -> tuple[str, dict]:
    lines, evs = [], {}
    for spec in ("audio:spoken-digits", "audio:drums"):
        ev = get_audio_evaluator(spec)
        splits = load_audio(spec, rate=ev.rate, length=ev.length)
        rows = real_rows(ev, splits)
        table = format_audio_table(rows, ev)
        print(table, flush=True)
        lines += [f"**{spec}** (evaluator `{ev.meta['name']}`, sha256 `{ev.sha256[:12]}...`, "
                  f"{ev.meta['train_size']} train clips, {ev.meta['train_recipe']['steps']} steps):", "",
                  "```", table, "```", ""]
        evs[spec] = (ev, splits)
    return "\n".join(lines), evs


def recipes_part(budget: float, n: int, recipes: list[str], threads: int, runs: Path, skip: bool,
                 settings: list[dict] | None = None) -> str:
    """Each audio recipe trained for ``budget`` seconds into ``runs``/RECIPE (kept: ``genforge sample`` and
    ``genforge eval`` read it after), then ``genforge eval``'s scoring of ``n`` samples. ``skip``: a run that
    finished before is scored again, not trained again. ``settings``: a diffusion run is also scored under each
    of these sampling controls (e.g. {"guidance": 4.0, "steps": 20}), a row each."""
    from genforge.config import load_config
    from genforge.generation.model import load as load_model
    from genforge.metrics.audio import evaluate_audio
    from genforge.training import train

    rows = ["| recipe | steps (s) | IS | FD | prec | recall | class match | x real time | real IS | real FD "
            "| round trip IS | round trip match |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in recipes:
        cfg = load_config(name, [f"max_seconds={budget}"] + ([f"num_threads={threads}"] if threads else []))
        run = runs / name
        took = "trained before"
        if not (skip and (run / "checkpoints" / "last.json").is_file()):
            shutil.rmtree(run, ignore_errors=True)
            t0 = time.perf_counter()
            train(cfg, run)
            took = f"{time.perf_counter() - t0:.0f}"
        model = load_model(run, device="cpu")
        own = {k: v for k, v in model.sampling_defaults.items() if k in ("guidance", "steps")}
        reference = None  # the real and round-trip rows: the same for every setting, computed once
        for controls in [{}] + [c for c in settings or [] if "steps" in own]:
            controls = {k: v for k, v in controls.items() if k != "guidance" or model.num_classes}
            result = evaluate_audio(model, n=n, seed=0, progress=False, reference_rows=reference, **controls)
            reference = result["rows"][1:]
            s, real = result["rows"][0][1], result["rows"][1][1]
            match = f"{100 * s['class_match']:.1f}%" if "class_match" in s else ""
            # the real test clips through the recipe's own mel picture and Griffin-Lim: its ceiling
            trip = next((r for label, r in result["rows"] if label.startswith("real: test through")), None)
            cap = f"{trip['is']:.2f} | {100 * trip['class_match']:.1f}%" if trip else " | "
            how = ", ".join(f"{k} {v:g}" for k, v in {**own, **controls}.items())
            rows.append(f"| {name}{f' ({how})' if how else ''} | {model.meta.get('step')} ({took}) | {s['is']:.2f} | "
                        f"{s['fd']:.2f} | {s['precision']:.3f} | {s['recall']:.3f} | {match} | "
                        f"{s['realtime_factor']:.1f}x | {real['is']:.2f} | {real['fd']:.2f} | {cap} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def enhance_part(budget: float, prompts: int) -> str:
    data = enhance.load_enhancement_data(seed=0)
    if prompts:
        data.test = data.test[:prompts]
    den = enhance.train_denoiser(None, max_seconds=budget, data=data)
    size = enhance.best_wiener_size(data)
    mixtures = enhance.mixtures_of(data, "test", seed=1)
    methods = {"noisy input": None, "spectral subtraction": enhance.spectral_subtraction,
               f"scipy.signal.wiener (size {size})": lambda x: enhance.wiener(x, size),
               f"genforge mask U-Net ({den.meta['steps']} steps)": den.enhance}
    rows = enhance.enhancement_table(methods, mixtures)
    table = enhance.format_enhancement(rows)
    print(table, flush=True)
    summary = []
    for kind in enhance.NOISES:
        at0 = {r["method"]: r["si_sdri"] for r in rows if r["noise"] == kind and r["snr"] == 0}
        ours = next(v for k, v in at0.items() if k.startswith("genforge"))
        best = max((v, k) for k, v in at0.items() if not k.startswith(("genforge", "noisy")))
        summary.append(f"- {kind} at 0 dB: genforge {ours:+.2f} dB SI-SDRi against the best baseline's {best[0]:+.2f} "
                       f"({best[1]}): {ours - best[0]:+.2f} dB")
    return (f"{len(data.test)} held-out test prompts x 3 noises x 3 SNRs; denoiser trained {den.meta['train_seconds']:.0f} s "
            f"({den.meta['steps']} steps) on {len(data.train)} train prompts.\n\n" + table + "\n\n" + "\n".join(summary))


def speech_part(budget: float, runs: Path, skip: bool) -> str:
    """The image-to-speech model trained for ``budget`` seconds into ``runs``/image-to-speech (kept; ``skip``:
    a model saved there before is scored again), then its agreement on every mnist5k test image (the split is
    sorted by digit, so a prefix of it would leave digits out), the way it samples and from its prior."""
    run = runs / "image-to-speech"
    if skip and i2s.is_image_to_speech(run):
        model = i2s.load_image_to_speech(run)
    else:
        shutil.rmtree(run, ignore_errors=True)
        model = i2s.train_image_to_speech(run, max_seconds=budget)
    test = load_splits(i2s.IMAGE_SPEC, image_size=28, channels=1).test
    images, labels = test.x[..., 0], test.y
    ev = get_audio_evaluator("audio:spoken-digits")
    t0 = time.perf_counter()
    agree = i2s.agreement(model, ev, images, labels)
    seconds = time.perf_counter() - t0
    cfg = model.cfg
    own = (f"from {cfg.neighbours} neighbours" if cfg.sample_from == "neighbours"
           else f"from the prior at temperature {cfg.temperature:g}")
    others = [("prior", t) for t in sorted({cfg.temperature, 1.0}, reverse=True)
              if cfg.sample_from != "prior" or t != cfg.temperature]
    also = "; ".join(f"{100 * i2s.agreement(model, ev, images, labels, sample_from=how, temperature=t):.1f}% "
                     f"from the prior at temperature {t:g}" for how, t in others)
    return (f"image-to-speech ({model.meta['steps']} steps in {model.meta['train_seconds']:.0f} s, prior "
            f"{cfg.prior}): agreement **{100 * agree:.1f}%** {own} on all {len(images)} mnist5k test images "
            f"(the digit evaluator's class of the speech against the image's label; chance 10%)"
            f"{f' ({also})' if also else ''}; {len(images) / seconds:.1f} images said per second")


def parse_settings(text: str) -> list[dict]:
    """"4:20,3:10" -> [{"guidance": 4.0, "steps": 20}, {"guidance": 3.0, "steps": 10}]."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        g, _, steps = item.partition(":")
        try:
            out.append({"guidance": float(g), "steps": int(steps)})  # no ":" leaves steps "": refused here
        except ValueError:
            raise SystemExit(f"--settings: {item!r} is not GUIDANCE:STEPS (e.g. 4:20)") from None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per model")
    parser.add_argument("--n", type=int, default=500, help="samples per recipe")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--recipes", default="", help="comma list of audio recipes (default: all bundled ones)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--prompts", type=int, default=0, help="enhancement: the first N test prompts (0: all)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "audio-bench-runs"),
                        help="recipes and speech: where each model is kept")
    parser.add_argument("--skip-train", action="store_true",
                        help="recipes and speech: score the models kept in --runs again")
    parser.add_argument("--settings", default="", metavar="G:STEPS,...",
                        help="recipes: also score each diffusion run at these guidance:steps settings (4:20,3:10)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    facts = print_machine()
    command = command_line("audio.py")
    sections = []
    if "evaluators" in parts:
        sections.append("### Evaluators and the real-data rows\n\n" + evaluators_part()[0])
    if "recipes" in parts:
        from genforge.recipes import names as recipe_names

        recipes = [r for r in args.recipes.split(",") if r] or [r for r in recipe_names()
                                                               if r.startswith(("digits-", "drums-"))]
        sections.append(f"### Recipes ({args.budget:.0f} s of training each, {args.n} samples)\n\n"
                        + recipes_part(args.budget, args.n, recipes, args.threads, Path(args.runs),
                                       args.skip_train, parse_settings(args.settings)))
    if "enhance" in parts:
        sections.append("### Speech enhancement (`genforge repair --task denoise` on audio)\n\n"
                        + enhance_part(args.budget, args.prompts))
    if "speech" in parts:
        sections.append("### Image to speech\n\n" + speech_part(args.budget, Path(args.runs), args.skip_train))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = "\n\n".join(sections)
    # one section per set of parts, so two runs (e.g. recipes beside enhance,speech) can each write theirs
    mark = "audio-" + "-".join(parts)
    threads = args.threads or facts.get("torch_threads")
    section = (f"<!-- {mark}:start -->\n## Audio: {', '.join(parts)} (`benchmarks/audio.py`)\n\n`{command}` on "
               f"{cpu_name()} ({platform.machine()}, {threads} torch threads, matmul "
               f"{facts.get('fp32_matmul_gflops', 0):.0f} GFLOP/s), {stamp}.\n\n{body}\n<!-- {mark}:end -->")
    print(section)
    write_section(Path(args.results), section)


if __name__ == "__main__":
    main()
