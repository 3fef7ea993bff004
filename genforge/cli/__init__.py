"""genforge: train, sample, evaluate and serve generative models (GAN, VAE, diffusion).

Run 'genforge COMMAND --help' for a command's options; 'genforge recipes' lists the bundled recipes.
Errors you can fix print one line and exit with status 2; --debug shows the traceback.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import click

from genforge.cli.options import CONTEXT, Group, key_file_option, short_help
from genforge.devices import set_wait_policy_if_busy
from genforge.errors import GenforgeError
from genforge.memory import tune_allocator
from genforge.version import __version__

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# Every command, and the module:attribute that defines it. Import strings rather than objects so that
# 'genforge --help' and 'genforge train --help' import only the command they show: the modules import torch
# inside their functions, and this table is the one place that names them.
COMMANDS = {
    "train": "genforge.cli.train:train",
    "recipes": "genforge.cli.train:recipes",
    "sample": "genforge.cli.sample:sample",
    "interpolate": "genforge.cli.sample:interpolate",
    "memorization": "genforge.cli.sample:memorization",
    "verify": "genforge.cli.sample:verify",
    "info": "genforge.cli.sample:info",
    "data": "genforge.cli.sample:data",
    "distill": "genforge.cli.distill:distill",
    "eval": "genforge.metrics.cli:eval_command",
    "evaluator": "genforge.metrics.cli:evaluator",
    "report": "genforge.metrics.cli:report",
    "repair": "genforge.apps.cli:repair",
    "transfer": "genforge.apps.cli:transfer",
    "augment": "genforge.apps.cli:augment",
    "inspect": "genforge.apps.inspection.cli:inspect",
    "serve": "genforge.serve.cli:serve",
    "keys": "genforge.serve.cli:keys",
    "audit": "genforge.serve.cli:audit",
    "export": "genforge.serve.cli:export",
    "security": "genforge.security.cli:security",
}


class LazyGroup(Group):
    """The top-level group: a command's module is imported only when the command runs or shows its help.

    The command list of 'genforge --help' reads each command's summary from its module's source (ast), since
    importing genforge.metrics or genforge.apps.inspection would import torch through their packages."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def command_summaries(self, ctx) -> list[tuple[str, str]]:
        return [(name, short_help(docstring_of(COMMANDS[name]))) for name in self.list_commands(ctx)]


def docstring_of(target: str) -> str | None:
    """The docstring of ``module:function`` read from the module's source file, without importing it."""
    module, attr = target.split(":")
    path = Path(__file__).parent.parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            return ast.get_docstring(node)
    return None


@click.group(cls=LazyGroup, context_settings=CONTEXT, help=__doc__)
@click.option("--debug", is_flag=True, help="show the traceback of an error")
@key_file_option
@click.version_option(__version__, prog_name="genforge", message="%(prog)s %(version)s")
def cli(debug: bool) -> None:
    pass


def _debug_requested(args: list[str]) -> bool:
    """--debug among the top-level options (before the command name)."""
    for a in args:
        if a == "--debug":
            return True
        if not a.startswith("-"):
            return False
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the ``genforge`` command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from genforge.crypto import use_key_file

    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    debug = _debug_requested(args)
    use_key_file(None)  # a --key-file of an earlier main() in this process does not carry over
    try:
        tune_allocator()  # before any command imports torch (a bad GENFORGE_MALLOC is a one-line error)
        if args and not {"-h", "--help", "--version"} & set(args):  # help loads no torch: no 0.1 s load probe
            set_wait_policy_if_busy()  # busy cores: OpenMP threads sleep rather than spin (read once, at torch's load)
        result = cli.main(args, prog_name="genforge", standalone_mode=False)
        return int(result or 0)
    except click.exceptions.Exit as e:  # raised by a command that stops early
        return e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:  # 'genforge' or 'genforge data' alone: the help, status 2
        print(e.ctx.get_help())
        return EXIT_USER_ERROR
    except click.ClickException as e:  # usage: unknown option or command, missing argument, bad value
        if debug:
            raise
        where = e.ctx.command_path if getattr(e, "ctx", None) else "genforge"
        print(f"genforge: error: {e.format_message()} (see '{where} --help')", file=sys.stderr)
        return EXIT_USER_ERROR if e.exit_code == 2 else e.exit_code
    except GenforgeError as e:
        if debug:
            raise
        print(f"genforge: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # disk full, permission denied...: the user's environment, not a bug
        if debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"genforge: error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (KeyboardInterrupt, click.Abort):
        print("genforge: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
