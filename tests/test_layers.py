"""The import contract: genforge's layers import downward only, late imports say why, modalities are implemented.

Every module is parsed (nothing imported), so a violation is reported with its file and line before any
import-time side effect could hide it. The layers, lowest first, are the README's module table.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

import genforge
from genforge.data import sources
from genforge.errors import DataError, GenforgeError
from genforge.generation import writers
from genforge.data.audio import KINDS as AUDIO_KINDS
from genforge.data.audio import load_audio
from genforge.data.audio.features import picture_spec
from genforge.data.examples import LOADERS
from genforge.data.series import KINDS as SERIES_KINDS
from genforge.data.series import load_series
from genforge.data.table import KIND_PREFIXES as TABLE_KINDS
from genforge.data.table import TableTransformer, load_table
from genforge.data.text import KINDS as TEXT_KINDS
from genforge.data.text import load_text
from genforge.generation.sampling import OUTPUTS
from genforge.models import build_networks, network_options
from genforge.models.files import save_model
from genforge.modalities import MODALITIES, of_spec

PACKAGE = Path(genforge.__file__).parent
FIXTURE_MODEL = Path(__file__).parent / "fixtures" / "legacy" / "models" / "dcgan"

# lowest first; a module may import its own layer and the ones below it. recipes (the bundled YAML files)
# sits below config, whose load_config finds a recipe by name; devices (CUDA/MPS/CPU choice) just above config:
# it reads the config's device field and everything from data upwards may ask it.
LAYERS = ["version", "errors", "io", "memory", "crypto", "controls", "recipes", "config", "devices", "modalities",
          "data", "models", "generation", "postprocess", "metrics", "training", "apps", "export", "security", "serve",
          "cli", "__init__", "__main__"]
RANK = {name: i for i, name in enumerate(LAYERS)}


def _modules() -> dict[str, Path]:
    """{"genforge.metrics.scores": path, ...} for every .py file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    """The layer of a module: its first component below genforge; the package's own __init__ is on top. A
    folder's command-line module (genforge.metrics.cli, genforge.apps.inspection.cli) belongs to the CLI layer:
    it maps commands onto its folder's functions with the CLI's shared options."""
    parts = module.split(".")
    if len(parts) > 2 and parts[-1] == "cli":
        return "cli"
    return "__init__" if len(parts) == 1 else parts[1]


def _comment_lines(source: str) -> set[int]:
    return {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The genforge modules an import statement runs (a name imported from a package may be a submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
    return sorted({n for n in names if n.split(".")[0] == "genforge"})


def _imports() -> list[dict]:
    """Every import statement of the package: module, line, level (module or function), targets, comment."""
    found = []
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        comments = _comment_lines(source)
        late, block_start = set(), {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                late |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
            for field in ("body", "orelse", "finalbody"):  # consecutive imports share the comment above them
                start = None
                children = getattr(node, field, None)
                for child in children if isinstance(children, list) else []:
                    is_import = isinstance(child, (ast.Import, ast.ImportFrom))
                    start = (start or child.lineno) if is_import else None
                    if is_import:
                        block_start[id(child)] = start
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            # a comment on the line above the block of imports, or on any line of the block up to this one
            lines = range(block_start.get(id(node), node.lineno) - 1, (node.end_lineno or node.lineno) + 1)
            found.append({"module": module, "where": f"{path.relative_to(PACKAGE.parent)}:{node.lineno}",
                          "late": id(node) in late, "targets": _targets(node, module, path.name == "__init__.py"),
                          "commented": any(n in comments for n in lines), "text": ast.unparse(node)})
    return found


IMPORTS = _imports()


def test_every_module_belongs_to_a_layer():
    unknown = sorted({_layer(m) for m in MODULES} - set(LAYERS))
    assert not unknown, f"new top-level module(s) {unknown}: add them to LAYERS here and to the README's table"


def test_imports_go_to_the_same_or_a_lower_layer():
    upward = [f"{i['where']}: {i['text']} ({_layer(i['module'])} -> {_layer(t)})"
              for i in IMPORTS for t in i["targets"] if RANK[_layer(t)] > RANK[_layer(i["module"])]]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


# Files rewritten on other branches when this contract was written (the training loop split into stages):
# their silent late imports are counted here, may only go down, and the entry goes once the file is annotated.
# Every other file has none. The CLI layer is exempt as a whole, for one stated reason: each command imports
# its work inside its function so that `genforge --help` imports no torch (tests/test_cli_flags.py holds it).
PENDING_SILENT_LATE = {"genforge/training/privacy.py": 10, "genforge/training/checkpoint.py": 2,
                       "genforge/training/loop.py": 1}


def test_every_function_level_import_says_why_it_is_late():
    """A late import keeps an optional extra optional, --help fast or a heavy import off the common path,
    and its comment (on its line or the one above) says which; anything else belongs at the top of the file."""
    silent: dict[str, list[str]] = {}
    for i in IMPORTS:
        if i["late"] and not i["commented"] and _layer(i["module"]) != "cli":
            silent.setdefault(i["where"].split(":")[0], []).append(f"{i['where']}: {i['text']}")
    over = [line for path, lines in sorted(silent.items()) if len(lines) > PENDING_SILENT_LATE.get(path, 0)
            for line in lines]
    assert not over, "function-level imports without a comment saying why:\n" + "\n".join(over)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules, or None (iterative DFS, colours white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(edges):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))
    return None


@pytest.mark.parametrize("late", [False, True], ids=["module-level", "counting-late-imports"])
def test_no_import_cycle(late):
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if late or not i["late"]:
            for t in i["targets"]:
                # importing genforge.a.b runs genforge.a's __init__ first, unless the importer lives inside it
                parents = {".".join(t.split(".")[:k]) for k in range(2, t.count(".") + 1)}
                edges[i["module"]] |= {p for p in parents | {t}
                                       if p != i["module"] and not i["module"].startswith(p + ".")}
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_contract_catches_what_it_forbids():
    """The checks above, fed a bad module, fail: an upward import, a silent late import, a cycle."""
    bad = "import os\n\ndef f():\n    from genforge.cli import main\n    return main\n"
    tree = ast.parse(bad)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    (target,) = _targets(node, "genforge.io", is_package=False)
    assert RANK[_layer(target)] > RANK[_layer("genforge.io")]             # upward
    assert 4 not in _comment_lines(bad) and 3 not in _comment_lines(bad)  # and silent
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# ------------------------------------------------------------------------------------------- modalities


def _read(name: str, kind: str, missing: Path):
    """Read a spec of ``kind`` naming ``missing`` through modality ``name``'s data layer."""
    if name == "image":
        spec = sources.parse_spec(kind if kind == "mnist5k" else f"{kind}:{missing}")
        assert spec.kind == kind
        return sources.read_source(spec, image_size=28, channels=0)
    if name == "table":  # each form reaches its reader: a missing file, an unknown bundled table, both named
        return load_table(f"{kind}:{missing}")
    if name == "text":  # text:PATH reaches the corpus reader
        return load_text(f"{kind}:{missing}")
    if name in ("audio", "audio-wave"):  # audio: the folder reader names the folder it cannot find
        return load_audio(f"{kind}:{missing}")
    # series: every form reaches its own reader (tep's reader names the unknown option it was given)
    return load_series(f"{kind}:{missing}", window=8)


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_a_modalitys_sources_are_read_by_genforge_data(name, tmp_path):
    """Each declared source parses as a spec of that kind and reaches its own reader (a missing path is that
    reader's clear DataError naming the path; a kind without a reader falls through to an assertion)."""
    for kind in MODALITIES[name].sources:
        assert of_spec(f"{kind}:x").name == name  # the prefix alone says which modality a spec is
        missing = tmp_path / f"no-{kind}"
        if kind == "mnist5k":
            assert len(_read(name, kind, missing).train.x) == 5000
        else:
            with pytest.raises(DataError, match=re.escape(str(missing.name))):
                _read(name, kind, missing)
    with pytest.raises(AssertionError):  # what an undeclared kind meets: no reader
        sources.read_source(sources.Spec("bogus", tmp_path), image_size=28, channels=0)


def test_every_source_genforge_data_reads_is_declared_by_a_modality():
    readable = ({form.split(":")[0].strip() for form in sources.SPEC_FORMS.split(",")} | set(SERIES_KINDS)
                | set(TABLE_KINDS) | set(TEXT_KINDS) | set(AUDIO_KINDS))
    declared = {kind for m in MODALITIES.values() for kind in m.sources}
    assert readable == declared
    assert len(declared) == sum(len(m.sources) for m in MODALITIES.values())  # no prefix in two modalities
    assert set(LOADERS) == set(MODALITIES) == set(OUTPUTS) == set(writers.WRITERS)


def _model_of(name: str, tmp_path: Path):
    """A loadable model of modality ``name``: the legacy image fixture, or a fresh 1-D VAE with a transform."""
    if name == "image":
        return genforge.load(FIXTURE_MODEL)
    torch.manual_seed(0)
    if name == "table":  # a Gaussian copula (no training) of a bundled table
        tf = TableTransformer.fit(load_table("table:gbsg2").train, "quantile")
        transform = {"kind": "table", **tf.to_json()}
        nets = build_networks("copula", (tf.dim,), tf.dim, 1, net_options=network_options("copula", {}, transform))
        meta = {"model": "copula", "modality": "table", "example_shape": [tf.dim], "z_dim": tf.dim,
                "base_channels": 1, "num_classes": 0, "transform": transform,
                "net_options": network_options("copula", {}, transform)}
        return genforge.load(save_model(tmp_path / "table-model", nets, meta))
    if name == "text":  # a tiny GPT with a character tokenizer
        from genforge.data.text.tokenizer import CharTokenizer

        tok = CharTokenizer.train("abc \n")
        options = {"vocab_size": tok.vocab_size, "n_layer": 1, "n_head": 1, "n_embd": 8}
        nets = build_networks("gpt", (17,), z_dim=1, base_channels=1, net_options=options)
        transform = {"kind": "text", "unit": "window", "tokenizer": "char", "vocab_size": tok.vocab_size,
                     "context": 16, "tokenizer_json": tok.to_json()}
        meta = {"model": "gpt", "modality": "text", "example_shape": [17], "z_dim": 1, "base_channels": 1,
                "transform": transform, "net_options": options}
        return genforge.load(save_model(tmp_path / "text-model", nets, meta))
    if name == "audio":  # a log-mel picture model: its transform says how pictures become sound
        nets = build_networks("dcgan", (1, 16, 16), z_dim=8, base_channels=4)
        transform = {"kind": "audio-mel", "mel": picture_spec(8000, 2048, 16).to_dict(), "side": 16, "rate": 8000,
                     "length": 2048, "griffin_lim": 4}
        meta = {"model": "dcgan", "modality": "audio", "example_shape": [1, 16, 16], "z_dim": 8, "base_channels": 4,
                "num_classes": 0, "transform": transform}
        return genforge.load(save_model(tmp_path / "audio-model", nets, meta))
    if name == "audio-wave":
        nets = build_networks("wavegan", (1, 256), z_dim=8, base_channels=4)
        meta = {"model": "wavegan", "modality": "audio-wave", "example_shape": [1, 256], "z_dim": 8,
                "base_channels": 4, "num_classes": 0, "transform": {"kind": "audio-wave", "rate": 8000, "length": 256}}
        return genforge.load(save_model(tmp_path / "wave-model", nets, meta))
    nets = build_networks("cvae-1d", (2, 40), z_dim=8, base_channels=4, num_classes=2)
    transform = {"kind": "series", "channel_names": ["a", "b"],
                 "normalization": {"method": "minmax", "shift": [0.0, 100.0], "scale": [1.0, 3.0]}}
    meta = {"model": "cvae-1d", "modality": "series", "example_shape": [2, 40], "z_dim": 8, "base_channels": 4,
            "num_classes": 2, "class_names": ["ok", "fault"], "transform": transform}
    return genforge.load(save_model(tmp_path / "series-model", nets, meta))


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_a_modalitys_writers_exist(name, tmp_path):
    """Each declared --out suffix is written by genforge.generation.writers; an undeclared one is refused."""
    model = _model_of(name, tmp_path)
    assert model.modality.name == name
    samples = model.sample(4, seed=0)
    output_dtype = MODALITIES[name].output_dtype
    assert (samples.x.dtype.names is not None) if output_dtype == "rows" else samples.x.dtype == np.dtype(output_dtype)
    for suffix in MODALITIES[name].writers:
        out = writers.write_samples(samples, tmp_path / f"out{suffix}", model)
        assert out.exists()
        if suffix == ".npz":
            with np.load(out) as f:
                assert np.array_equal(f["x"], samples.x)
        elif suffix == "":
            assert len(list(out.glob("*.png")) + list(out.glob("*.wav"))) == 4  # images: PNGs; audio: WAVs
    with pytest.raises(GenforgeError, match="unknown output format .bogus"):
        writers.write_samples(samples, tmp_path / "out.bogus", model)


def test_the_list_of_every_control_is_the_families_and_modalities_own():
    """genforge.controls.ALL (torch-free, for the CLI's flags) lists exactly the controls the families and the
    modalities declare, so a control added to a family cannot miss its flag."""
    from genforge import controls
    from genforge.models import MODELS

    declared = {c.name for spec in MODELS.values() for c in spec.method.CONTROLS}
    declared |= {c.name for m in MODALITIES.values() for c in m.output_controls}
    assert {c.name for c in controls.ALL} == declared and len(controls.ALL) == len(declared)
