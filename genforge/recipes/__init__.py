"""The bundled recipes: one YAML file per model and data set, installed with the package.

``genforge train mnist5k-dcgan`` finds ``mnist5k-dcgan.yaml`` here; a path to a YAML file of your own works
the same. ``genforge recipes`` lists them with the first line of each file's comment.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from genforge.errors import ConfigError


def names() -> list[str]:
    """Every bundled recipe's name, sorted."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def path_of(recipe: str | Path) -> Path:
    """A recipe file: an existing path as given, else the bundled recipe of that name ("mnist5k-dcgan", with or
    without ".yaml"). An unknown name is an error that suggests the closest names."""
    given = Path(recipe)
    if given.is_file():
        return given
    name = given.name[:-5] if given.name.endswith(".yaml") else given.name
    if str(given) in (name, name + ".yaml") and name in names():
        return Path(str(resources.files(__name__).joinpath(name + ".yaml")))
    if given.suffix in (".yaml", ".yml") or given.parent != Path("."):
        raise ConfigError(f"config file not found: {recipe}")
    close = difflib.get_close_matches(name, names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else " (genforge recipes lists them)"
    raise ConfigError(f"no recipe named {name!r}{hint}")


def summary(name: str) -> str:
    """The first line of a bundled recipe's leading comment."""
    text = resources.files(__name__).joinpath(name + ".yaml").read_text()
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
