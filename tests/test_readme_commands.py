"""Every genforge command line in the bash blocks of README.md and docs/*.md names a command that exists and
flags it accepts.

Checked by introspecting the click commands (nothing runs): a renamed command or flag fails here first.
"""

import re
import shlex
from pathlib import Path

import click

from genforge.cli import cli
from genforge.errors import GenforgeError

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_command_lines() -> list[tuple[str, list[str]]]:
    """("FILE:LINE", tokens after 'genforge') of each genforge command in the pages' fenced bash blocks."""
    out = []
    for page in PAGES:
        out += _page_lines(page)
    return out


def _page_lines(page: Path) -> list[tuple[str, list[str]]]:
    out, in_bash = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        number = f"{page.relative_to(ROOT)}:{number}"
        if line.startswith("```"):
            in_bash = line.strip() in ("```bash", "```sh", "```console")
            continue
        code = line.split("  #")[0].split(" # ")[0].strip()  # the comments beside the commands
        for part in code.split("&&") if in_bash else ():
            if part.strip().startswith("genforge "):
                out.append((number, shlex.split(part)[1:]))
    return out


def resolve(tokens: list[str]) -> tuple[click.Command, list[str], str]:
    """The command the tokens name, the tokens after it, and its path; top-level options are skipped."""
    command, path = cli, ["genforge"]
    ctx = click.Context(cli)
    rest = list(tokens)
    while isinstance(command, click.Group):
        while rest and rest[0].startswith("-"):  # genforge --key-file K COMMAND ...
            option = rest.pop(0)
            if option in ("--key-file",):
                rest.pop(0)
        assert rest, f"'{' '.join(path)}' needs a subcommand"
        name = rest.pop(0)
        sub = command.get_command(ctx, name)
        assert sub is not None, f"no command '{name}' in '{' '.join(path)}'"
        command, path = sub, path + [name]
    return command, rest, " ".join(path)


def test_readme_has_command_lines():
    assert len(readme_command_lines()) > 20


def test_every_readme_command_and_flag_exists():
    problems = []
    for number, tokens in readme_command_lines():
        try:
            command, rest, path = resolve(tokens)
        except AssertionError as e:
            problems.append(f"{number}: {e}")
            continue
        accepted = {opt for p in command.params if isinstance(p, click.Option) and not p.hidden
                    for opt in p.opts + p.secondary_opts}
        unknown = [t for t in rest if re.fullmatch(r"--[a-z][a-z0-9-]*", t.split("=")[0])
                   and t.split("=")[0] not in accepted]
        for flag in unknown:
            problems.append(f"{number}: '{path}' has no option {flag}")
        if not unknown:  # then the whole line must parse: argument count, values, one pair per --set
            try:
                command.make_context(path, list(rest))
            except (click.UsageError, GenforgeError) as e:
                problems.append(f"{number}: '{' '.join(tokens)}': {e}")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_flag_and_command():
    accepted = {o for p in resolve(["sample", "RUN"])[0].params for o in getattr(p, "opts", [])}
    assert "--out" in accepted and "--json" not in accepted
    try:
        resolve(["smaple", "RUN"])
    except AssertionError as e:
        assert "no command 'smaple'" in str(e)
    else:
        raise AssertionError("a mistyped command passed the checker")
