"""The options every ``genforge`` command shares, defined once and reused as decorators.

A command is a plain typed function whose docstring is its help; it takes the model argument, ``--out``,
``--seed``, ``--n``, ``--device``, ``--key-file`` ... from here, so a flag name means one thing everywhere.
Nothing here imports torch or numpy: ``genforge --help`` and ``genforge COMMAND --help`` build from it.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable

import click

from genforge.devices import NAMES_TEXT, check_name
from genforge.errors import GenforgeError

DATA_SPEC = "mnist5k | fashion-mnist[:DIR] | idx:DIR | npz:FILE | folder:DIR"
KEY_FILE_HELP = ("encryption key file: ID:KEY lines, the last the primary (default $GENFORGE_ENCRYPTION_KEY_FILE, "
                 "else $GENFORGE_ENCRYPTION_KEY); keys are never taken on the command line")
KEYS_FILE_HELP = "API key store of genforge serve (default $GENFORGE_KEYS_FILE, else $XDG_CONFIG_HOME/genforge/keys.json, ~/.config when unset)"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

Decorator = Callable[[Callable], Callable]


def stack(*decorators: Decorator) -> Decorator:
    """Apply ``decorators`` top to bottom, as if written one above the other over the function."""
    def apply(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return apply


def suggest(name: str, names) -> str:
    """' (did you mean X?)' for the closest of ``names``, else ''."""
    close = difflib.get_close_matches(name, list(names), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def short_help(doc: str | None) -> str:
    """A command's line in a command list: its docstring's first line, up to the example (': genforge ...')."""
    first = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
    return re.split(r"(?<=[:?]) genforge ", first)[0].rstrip(".:")


class Group(click.Group):
    """A click group that says "did you mean" for a mistyped command, and lists each command by the summary
    line of its docstring."""

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise click.UsageError(f"no command {name!r} in '{ctx.command_path}'"
                                   f"{suggest(name, self.list_commands(ctx))}", ctx)
        return super().resolve_command(ctx, args)

    def command_summaries(self, ctx) -> list[tuple[str, str]]:
        return [(name, short_help(self.get_command(ctx, name).help)) for name in self.list_commands(ctx)]

    def format_commands(self, ctx, formatter):
        rows = self.command_summaries(ctx)
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# --------------------------------------------------------------------------------------- arguments

def model_argument(fn=None, *, metavar: str = "MODEL"):
    """MODEL: a run directory (its best, else last, checkpoint) or a model directory."""
    deco = click.argument("model", metavar=metavar)
    return deco(fn) if fn is not None else deco


def out_option(help: str, required: bool = True, metavar: str = "PATH") -> Decorator:
    """``--out``: the one name of every output (file, folder or run directory)."""
    return click.option("--out", required=required, metavar=metavar, help=help)


def seed_option(help: str = "random seed", default: int = 0) -> Decorator:
    return click.option("--seed", type=int, default=default, show_default=True, help=help)


def n_option(default: int, help: str = "number of samples") -> Decorator:
    def positive(ctx, param, value):
        if value is not None and value < 1:
            raise GenforgeError(f"--n must be at least 1, got {value}")
        return value
    return click.option("--n", "n", type=int, default=default, show_default=True, callback=positive, help=help)


def data_option(help: str = "data spec (default: the model's own training data)", required: bool = False):
    return click.option("--data", required=required, metavar="SPEC", help=f"{help}: {DATA_SPEC}")


def image_options(fn):
    """``--image-size`` and ``--channels``: how a data source is read."""
    fn = click.option("--channels", type=click.Choice(["0", "1", "3"]), default="0", show_default=True,
                      callback=lambda ctx, param, value: int(value),
                      help="channels to insist on (0: as the source has)")(fn)
    return click.option("--image-size", type=int, default=28, show_default=True,
                        help="resize images to this side")(fn)


def quiet_option(fn):
    return click.option("--quiet", is_flag=True, help="no progress output")(fn)


def progress_option(fn):
    """``--progress/--no-progress``: bars on stderr; by default only when stderr is a terminal (a log file or a
    pipe gets none). The value reaching the command is a bool (see :func:`show_progress`)."""
    return click.option("--progress/--no-progress", default=None, callback=lambda ctx, param, value:
                        show_progress(value), help="progress bars on stderr (default: when it is a terminal)")(fn)


def show_progress(asked: bool | None) -> bool:
    """``asked`` when given, else whether stderr is a terminal."""
    return sys.stderr.isatty() if asked is None else bool(asked)


def device_option(help: str = "where the networks run") -> Decorator:
    """``--device``: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps; the spelling is checked here,
    the device's presence when the command runs (genforge.devices.pick)."""
    def checked(ctx, param, value):
        return None if value is None else check_name(value)
    return click.option("--device", default="auto", show_default=True, callback=checked, metavar="DEVICE",
                        help=f"{help}: {NAMES_TEXT} (auto: CUDA, then MPS, then CPU)")


def _use_key_file(ctx, param, value):
    if value is not None:
        from genforge.crypto import use_key_file  # late: the help stays free of the crypto module

        use_key_file(value)
    return value


def _refuse_key(ctx, param, value):
    if value is not None:  # the value is never echoed: it may be a secret
        raise GenforgeError("--key: keys are never accepted on the command line (other users can read it): put the "
                            "key in a file and give --key-file FILE, or set $GENFORGE_ENCRYPTION_KEY_FILE")
    return value


def key_file_option(fn):
    """``--key-file FILE`` (and a refusal of ``--key SECRET``, which argparse once took as an abbreviation)."""
    fn = click.option("--key", hidden=True, expose_value=False, callback=_refuse_key)(fn)
    return click.option("--key-file", metavar="FILE", expose_value=False, callback=_use_key_file,
                        help=KEY_FILE_HELP)(fn)


def keys_file_option(fn):
    return click.option("--keys-file", metavar="FILE", help=KEYS_FILE_HELP)(fn)


class LazyHelpOption(click.Option):
    """An option whose help text is computed when the help is shown (from a module that imports torch), so that
    merely listing the command stays light. ``help_from``: a function returning the text."""

    def __init__(self, *args, help_from: Callable[[], str], **kwargs):
        super().__init__(*args, **kwargs)
        self.help_from = help_from

    def get_help_record(self, ctx):
        if self.help is None:
            self.help = self.help_from()
        return super().get_help_record(ctx)


# --------------------------------------------------------------------------------------- renamed flags

def renamed(old: str, new: str, what: str = "") -> Decorator:
    """A hidden ``old`` flag whose use is a one-line error naming ``new`` (exit 2), not click's generic one."""
    def refuse(ctx, param, value):
        if value is not None:
            meaning = f" ({what})" if what else ""
            raise GenforgeError(f"{old} was renamed: use {new}{meaning}")
        return value
    return click.option(old, "_renamed_" + old.strip("-").replace("-", "_"), hidden=True, expose_value=False,
                        callback=refuse)


# --------------------------------------------------------------------------------------- parsing helpers

def comma_list(text: str | None) -> list[str] | None:
    """``"3,7,Sneaker"`` -> ``["3", "7", "Sneaker"]``; empty items are dropped; None stays None."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def require_modality(model, command: str, allowed: tuple[str, ...] = ("image",)) -> None:
    """Refuse, in one line, a command run on a model of a modality it does not handle (a series model given
    to genforge interpolate, which draws image grids)."""
    name = model.modality.name
    if name not in allowed:
        raise GenforgeError(f"{command} works on {' and '.join(allowed)} models; {model.path or model.name} is a "
                            f"{name} model (genforge sample --out writes its samples)")
