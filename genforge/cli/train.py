"""``genforge train`` and ``genforge recipes``.

Every field of :class:`genforge.config.Config` is a ``train`` flag, built here from the dataclass at import
time: ``batch_size`` is ``--batch-size``, a bool ``tensorboard`` is ``--tensorboard/--no-tensorboard``, a list
``g_betas`` is ``--g-betas 0.5,0.999``. A flag's help is the field's trailing comment in ``genforge/config.py``,
read only when the help is shown (:func:`field_comments`), so the comment stays the one description.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import time
import tokenize
import typing
from pathlib import Path

import click

from genforge import config as config_module
from genforge.cli.options import CONTEXT, key_file_option, out_option, quiet_option, stack
from genforge.config import Config
from genforge.errors import GenforgeError

HINTS = typing.get_type_hints(Config)
DEFAULTS = Config()
# fields the train command gives a meaning of its own on the command line
DP_FIELDS = ("dp_epsilon", "dp_delta", "dp_max_grad_norm")


@functools.cache
def field_comments() -> dict[str, str]:
    """Each Config field's trailing comment in config.py (joined with its continuation lines), by field name.

    A continuation is a comment-only line indented past the field names, under the field it follows;
    the section headers (``# --- ...``) and comments indented like the fields belong to no field.
    """
    source = Path(config_module.__file__).read_text()
    comments: dict[str, str] = {}
    last = None
    in_class = False
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        line = lines[tok.start[0] - 1]
        if tok.type == tokenize.NAME and tok.string == "class" and line.startswith("class Config"):
            in_class = True
        elif in_class and tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string == "def":
            break
        elif in_class and tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in HINTS:
            last = tok.string
        elif in_class and tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            comment_only = not line[:tok.start[1]].strip()
            if not comment_only and last is not None:
                comments[last] = text
            elif comment_only and tok.start[1] > 8 and last in comments:
                comments[last] += " " + text
            else:
                last = None  # a section header or a comment on the fields below
    return comments


class ConfigOption(click.Option):
    """A Config field as a flag; its help (the field's comment and default) is looked up when help is shown."""

    def __init__(self, *args, field: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.field = field

    def get_help_record(self, ctx):
        if self.help is None:
            default = getattr(DEFAULTS, self.field)
            if isinstance(default, bool):
                shown = "true" if default else "false"
            elif isinstance(default, list):
                shown = ",".join(f"{v:g}" for v in default)
            else:
                shown = repr(default) if isinstance(default, str) else f"{default:g}"
            comment = field_comments().get(self.field, "")
            self.help = f"{comment} [{self.field}; default {shown}]".strip()
        return super().get_help_record(ctx)


class NumberList(click.ParamType):
    name = "A,B"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return [float(v) for v in str(value).split(",")]
        except ValueError:
            self.fail(f"expected numbers separated by commas, like 0.5,0.999; got {value!r}", param, ctx)


def config_options(fn):
    """One option per Config field, default None, so that only the flags given override the recipe."""
    for f in reversed(dataclasses.fields(Config)):
        flag = "--" + f.name.replace("_", "-")
        hint = HINTS[f.name]
        if hint is bool:
            decl, kwargs = [f"{flag}/--no-{flag[2:]}", f.name], {"default": None}
        elif hint == list[float]:
            decl, kwargs = [flag, f.name], {"type": NumberList(), "default": None}
        else:
            choices = config_module.CHOICES.get(f.name)
            metavar = "|".join(map(str, choices)) if choices else {int: "INT", float: "X", str: "TEXT"}[hint]
            decl, kwargs = [flag, f.name], {"type": hint, "default": None, "metavar": metavar}
        fn = click.option(*decl, cls=ConfigOption, field=f.name, **kwargs)(fn)
    return fn


def split_set(ctx, param, values):
    """--set KEY=VALUE, one pair per use (it can never take the recipe path for a value)."""
    from genforge.config import parse_override

    pairs = []
    for item in values:
        if "=" not in item:
            raise GenforgeError(f"--set {item!r}: expected KEY=VALUE (one pair per --set; repeat --set for more)")
        pairs.append(parse_override(item))
    return pairs


def default_run_dir(name: str) -> Path:
    """Where a run goes without --out: runs/NAME-TIME."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_config(recipe: str | None, resume: str | None, out: str | None, sets: list, fields: dict):
    """The Config the flags describe, and its run directory: the recipe (or the run's own config.yaml under
    --resume), then --set pairs, then the field flags; checked field by field (genforge.config)."""
    from genforge.config import from_dict, load_config
    from genforge.recipes import path_of

    given = {k: v for k, v in fields.items() if v is not None}
    for name in DP_FIELDS:  # in a recipe, dp_epsilon: 0 means no DP; on the command line it is a mistake
        if name in given and not given[name] > 0:
            raise GenforgeError(f"--{name.replace('_', '-')} must be positive, got {given[name]:g}")
    if resume:
        if recipe or out:
            raise GenforgeError("--resume RUN takes the run's own config.yaml: give no RECIPE or --out")
        run = Path(resume)
        if not (run / "config.yaml").is_file():
            raise GenforgeError(f"{run}: not a run directory (no config.yaml)")
        path = run / "config.yaml"
    else:
        if not recipe:
            raise GenforgeError("give a RECIPE (a bundled name such as mnist5k-dcgan: genforge recipes lists them; "
                                "or a YAML file) or --resume RUN")
        if "=" in recipe and not Path(recipe).exists():
            raise GenforgeError(f"RECIPE {recipe!r} looks like KEY=VALUE: --set takes one pair per use "
                                "(--set a=1 --set b=2), or give the field's own flag")
        path = path_of(recipe)
        run = Path(out) if out else default_run_dir(path.stem)
    cfg = load_config(path)
    if sets:
        cfg = from_dict(dict(sets), "--set", base=cfg)
    if given:
        cfg = from_dict(given, "command line", base=cfg)
    return cfg, run


@click.command(context_settings=CONTEXT)
@click.argument("recipe", required=False, metavar="[RECIPE]")
@out_option("run directory (default runs/RECIPE-TIME)", required=False, metavar="RUN")
@click.option("--resume", metavar="RUN", help="continue this run from its last checkpoint, with its own config")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", callback=split_set,
              help="override one config field (repeat for more); the same as its flag, e.g. --set batch_size=32")
@click.option("--print-config", is_flag=True, help="print the resolved config as YAML, checked, and exit")
@click.option("--dry-run", is_flag=True, help="check the config and that the data loads, say what would run, "
                                              "and exit")
@click.option("--allow-plaintext", is_flag=True,
              help="resume an encrypted run with encrypt=false, writing its next checkpoints in plaintext")
@stack(quiet_option, key_file_option)
@config_options
def train(recipe: str | None, out: str | None, resume: str | None, sets: list, print_config: bool,
          dry_run: bool, allow_plaintext: bool, quiet: bool, **fields) -> int:
    """Train a model from a recipe: genforge train mnist5k-dcgan --max-steps 2000 --out runs/dc.

    RECIPE is a bundled recipe name (genforge recipes lists them) or a YAML file. Every config field is a
    flag below; flags override the recipe. The run directory receives the resolved config, metrics.jsonl,
    TensorBoard events, sample grids and checkpoints. Continue a stopped run with --resume RUN.

    The application models (speech-denoiser, image-to-speech; listed by genforge recipes) train by name too,
    with --out, --max-seconds (default 600), --max-steps and --seed only.
    """
    from genforge.apps import APP_MODELS

    if recipe in APP_MODELS and not Path(recipe).exists():
        return train_app_model(recipe, out, quiet, bool(resume or sets or print_config or dry_run or allow_plaintext),
                               {k: v for k, v in fields.items() if v is not None})
    cfg, run = resolve_config(recipe, resume, out, sets, fields)
    if print_config or dry_run:
        import yaml

        from genforge.training import check_config

        check_config(cfg, "command line")
        if print_config:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        from genforge.data import load_splits

        splits = load_splits(cfg.data, image_size=cfg.image_size, channels=cfg.channels, on_bad=cfg.on_bad,
                             dedup=cfg.dedup, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                             seed=cfg.split_seed)
        budget = f" or {cfg.max_seconds:g} s" if cfg.max_seconds else ""
        print(f"genforge: would {'resume' if resume else 'train'} {cfg.model} on {cfg.data} "
              f"({len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test images of shape "
              f"{splits.image_shape}) for {cfg.max_steps} steps{budget}, batch {cfg.batch_size}, device "
              f"{cfg.device}, into {run}")
        return 0
    from genforge.training import train as run_training

    result = run_training(cfg, run, resume=bool(resume), quiet=quiet, allow_plaintext=allow_plaintext)
    from genforge.cli import EXIT_INTERRUPTED

    return EXIT_INTERRUPTED if result.interrupted else 0


APP_FLAGS = ("max_seconds", "max_steps", "seed")


def train_app_model(name: str, out: str | None, quiet: bool, other_options: bool, given: dict) -> int:
    """``genforge train speech-denoiser`` (an application's own model, genforge.apps.APP_MODELS): it trains
    itself for --max-seconds (default 600) or --max-steps, from --seed, into --out."""
    from genforge.apps import APP_MODELS

    extra = sorted(set(given) - set(APP_FLAGS))
    if other_options or extra:
        named = ", ".join("--" + k.replace("_", "-") for k in extra) or "--resume, --set, --print-config or --dry-run"
        raise GenforgeError(f"{name} is an application model, trained by its own code: only --out, --max-seconds, "
                            f"--max-steps and --seed apply to it (got {named})")
    run = Path(out) if out else default_run_dir(name)
    if run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise GenforgeError(f"{run} is not an empty folder: choose another --out (nothing there was changed)")
    max_seconds = float(given.get("max_seconds", 600.0)) or float("inf")  # 0: no time limit, as for recipes
    max_steps = int(given.get("max_steps", 1_000_000_000))
    model = APP_MODELS[name].train(run, max_seconds, max_steps, int(given.get("seed", 0)), progress=not quiet)
    if not quiet:
        print(f"genforge: {name}: {model.meta['steps']} steps in {model.meta['train_seconds']:g} s, saved in {run}")
    return 0


@click.command(context_settings=CONTEXT)
def recipes() -> int:
    """List the bundled recipes: name, family, data and what each is best at.

    Train one by name: genforge train NAME. Print one resolved: genforge train NAME --print-config.
    """
    from genforge.config import load_config
    from genforge.models import family_of
    from genforge.recipes import names, path_of, summary

    from genforge.apps import APP_MODELS

    rows = []
    for name in names():
        cfg = load_config(path_of(name))
        rows.append((name, f"{family_of(cfg.model)} ({cfg.model})", cfg.data, summary(name)))
    rows += [(name, "application model", app.data, app.summary) for name, app in APP_MODELS.items()]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], width)) + "  " + row[3])
    return 0
