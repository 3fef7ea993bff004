"""`tep:`: the Tennessee Eastman process, simulated with tep-studio and cached.

The benchmark protocol of process monitoring (Downs & Vogel 1993; the Braatz data sets): a sample every
3 minutes of the 41 measurements and the 12 manipulated variables, normal operation and each fault IDV k,
training runs of 480 samples (the fault on from the first sample) and test runs of 960 samples with the
fault introduced at sample 160, for several seeds of the simulator's noise.

tep-studio (PyPI) compiles the modified TEP kernel of Bathelt, Ricker & Jelali (2015) with gcc at install
time and ships the Ricker (1996) decentralized controller, which keeps the open-loop unstable plant
running. Its kernel has 28 disturbances: IDV 1-20 are Downs & Vogel's; IDV 21-28 are the modified
kernel's random feed, pressure and cooling-water variations (not the stuck valve that some data sets
call IDV 21).

A simulation runs once per (simulator version, protocol, seeds) and is cached as an .npz under
$GENFORGE_CACHE/tep, else $XDG_CACHE_HOME/genforge/tep (or ~/.cache/genforge/tep), written atomically.
Options in the spec:

    tep:                                   normal + every fault the simulator has, seeds 0,1,2
    tep:faults=1-21;seeds=0-4              ranges and comma lists
    tep:faults=1;seeds=0;train=20;test=40;onset=10;warmup=4    a tiny run (tests)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from genforge.data.npz import ZIP_ERRORS
from genforge.errors import DataError
from genforge.io import atomic_write, cache_dir as cache_dir_of

EXTRA = "pip install 'genforge[series]'"
TESTED_VERSION = "0.2.0"  # the tep-studio release genforge pins and was checked against
SAMPLE_MINUTES = 3
# The controller's base sample time in hours (tep_studio.control.registry._TS_BASE): each step advances the
# plant by it, and a sample is recorded every SAMPLE_MINUTES / 60 / CONTROL_INTERVAL_H = 100 steps.
CONTROL_INTERVAL_H = 0.0005
STEPS_PER_SAMPLE = round(SAMPLE_MINUTES / 60 / CONTROL_INTERVAL_H)
CACHE_FORMAT = 2  # bump when the cached arrays change meaning


@dataclass(frozen=True)
class Protocol:
    """What to simulate. faults=None means every fault the simulator has."""

    faults: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    train: int = 480  # samples per training run
    test: int = 960  # samples per test run
    onset: int = 160  # the first test sample taken with the fault on
    # Normal operation simulated before each run's first sample and not recorded: from tep-studio's start state
    # the Ricker controller takes about 20 h to settle (measured: mean |z| of a normal run falls from 3.4 to
    # 0.8 over the first 20 h), and a run should start from steady operation, as the benchmark's runs do.
    warmup: int = 480


@dataclass(eq=False)
class Runs:
    """Simulated runs of one split. A run that shut the plant down stops early: samples from
    `length[r]` on are zeros, never data."""

    x: np.ndarray  # float32 (R, C, T) in engineering units
    fault: np.ndarray  # int64 (R,) 0 = normal operation, k = IDV k
    seed: np.ndarray  # int64 (R,)
    length: np.ndarray  # int64 (R,) samples actually simulated
    onset: int  # index of the first sample with the fault on (0 for training runs)


@dataclass(eq=False)
class TEPData:
    train: Runs
    test: Runs
    channel_names: list[str]
    channel_units: list[str]
    protocol: Protocol  # with faults resolved
    version: str  # tep-studio's
    path: Path  # the cache file
    meta: dict = field(default_factory=dict)  # seconds, shutdowns, when

    @property
    def class_names(self) -> list[str]:
        return ["normal"] + [f"IDV{k:02d}" for k in self.protocol.faults]

    def describe(self) -> str:
        """What was simulated, for `genforge data check tep:`."""
        p = self.protocol
        n_meas = self.meta.get("measurements", 41)
        lines = [
            f"tep: Tennessee Eastman process, tep-studio {self.version} (modified TEP kernel, Ricker decentralized "
            f"control), {len(self.channel_names)} channels ({n_meas} measurements, "
            f"{len(self.channel_names) - n_meas} manipulated variables), a sample every {SAMPLE_MINUTES} min",
            f"  runs: normal + IDV {_ranges(p.faults)}, seeds {_ranges(p.seeds)}, each after {p.warmup} unrecorded "
            f"samples ({p.warmup * SAMPLE_MINUTES / 60:g} h) of normal operation",
            f"  train: {len(self.train.fault)} runs x {p.train} samples ({p.train * SAMPLE_MINUTES / 60:g} h, "
            "the fault on from the first sample)",
            f"  test: {len(self.test.fault)} runs x {p.test} samples ({p.test * SAMPLE_MINUTES / 60:g} h, the fault "
            f"introduced at sample {p.onset})",
        ]
        shutdowns = self.meta.get("shutdowns", [])
        lines.append("  shutdowns: " + ("none" if not shutdowns else "; ".join(
            f"IDV {s['fault']} seed {s['seed']} {s['split']} at sample {s['sample']} ({s['message']})"
            for s in shutdowns)))
        x = self.train.x[self.train.fault == 0]
        if len(x):
            flat = np.ptp(x[:, :, : int(self.train.length[self.train.fault == 0].min())], axis=(0, 2)) == 0
            if flat.any():
                lines.append("  constant in normal operation: " + ", ".join(np.array(self.channel_names)[flat]))
        if self.version != TESTED_VERSION:
            lines.append(f"  note: genforge was checked against tep-studio {TESTED_VERSION}")
        lines.append(f"  simulated in {self.meta.get('seconds', float('nan')):.1f} s ({self.meta.get('when', '?')}); "
                     f"cache: {self.path}")
        return "\n".join(lines)


def parse_options(text: str) -> Protocol:
    """`faults=1-21;seeds=0,1,2;train=480;test=960;onset=160` (any subset, any order) -> Protocol."""
    fields: dict = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("faults", "seeds", "train", "test", "onset", "warmup"):
            raise DataError(f"tep:{text}: option {part!r} is not one of faults=, seeds=, train=, test=, onset=, "
                            "warmup= (separated by ';')")
        if key in fields:
            raise DataError(f"tep:{text}: option {key}= given twice")
        if key == "faults" and value.strip() == "all":
            fields[key] = None
        elif key in ("faults", "seeds"):
            fields[key] = _int_list(value, f"tep:{text}: {key}")
        else:
            try:
                fields[key] = int(value)
            except ValueError:
                raise DataError(f"tep:{text}: {key}= takes one whole number, got {value!r}") from None
    p = Protocol(**fields)
    for name in ("train", "test"):
        if getattr(p, name) < 1:
            raise DataError(f"tep:{text}: {name}= must be at least 1 sample")
    if p.warmup < 0:
        raise DataError(f"tep:{text}: warmup= must be 0 or more samples")
    if not 0 <= p.onset < p.test:
        raise DataError(f"tep:{text}: onset={p.onset} must lie within the test run (0 to {p.test - 1})")
    if not p.seeds or len(set(p.seeds)) != len(p.seeds) or min(p.seeds) < 0:
        raise DataError(f"tep:{text}: seeds must be distinct non-negative integers")
    if p.faults is not None and (not p.faults or len(set(p.faults)) != len(p.faults)):
        raise DataError(f"tep:{text}: faults must be distinct IDV numbers")
    return p


def _int_list(value: str, where: str) -> tuple[int, ...]:
    out: list[int] = []
    for item in filter(None, (v.strip() for v in value.split(","))):
        lo, dash, hi = item.partition("-")
        try:
            a, b = (int(lo), int(hi)) if dash else (int(item), int(item))
        except ValueError:
            raise DataError(f"{where}: {item!r} is not a whole number or a range like 1-21") from None
        if b < a:
            raise DataError(f"{where}: range {item!r} runs backwards")
        out.extend(range(a, b + 1))
    if not out:
        raise DataError(f"{where}: no value given")
    return tuple(out)


def _ranges(values) -> str:
    """(1, 2, 3, 5) -> "1-3, 5"."""
    spans: list[list[int]] = []
    for v in sorted(values):
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def cache_dir() -> Path:
    """$GENFORGE_CACHE/tep, else $XDG_CACHE_HOME/genforge/tep (~/.cache when unset), as the evaluators' cache."""
    return cache_dir_of("tep")


def simulator():
    """The imported tep_studio package, or a DataError naming the extra (not installed, or its compiled
    kernel failed to build or load)."""
    try:
        version = importlib.metadata.version("tep-studio")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"tep: needs the Tennessee Eastman simulator tep-studio=={TESTED_VERSION}: {EXTRA} "
                        "(it compiles a C kernel, so gcc must be present)") from None
    try:
        module = importlib.import_module("tep_studio")
        module.TennesseeEastmanProcess()  # loads the compiled kernel
    except (ImportError, OSError, AttributeError, RuntimeError, MemoryError) as e:
        raise DataError(f"tep: tep-studio {version} is installed but its compiled simulator does not load "
                        f"({type(e).__name__}: {e}); reinstall it with gcc present: {EXTRA}") from None
    return module


def self_check(horizon_h: float = 2.0) -> dict:
    """tep-studio's own checks: its schema validation and its closed-loop quickstart run (the plant must
    stay up for `horizon_h` hours under the Ricker controller)."""
    tep = simulator()
    schema = tep.TennesseeEastmanProcess().validate()
    run = tep.ClosedLoopSimulation(control_interval=CONTROL_INTERVAL_H, horizon=horizon_h).run(seed=1431655765.0)
    return {"schema_ok": bool(schema["ok"]), "stabilized": bool(run.stabilized), "final_time_h": float(run.final_time)}


def load_tep(protocol: Protocol | str = "", *, cache: Path | None = None,
             log: Callable[[str], None] | None = None) -> TEPData:
    """The runs of `protocol` (a Protocol or the option text after `tep:`), simulated once and cached."""
    if isinstance(protocol, str):
        protocol = parse_options(protocol)
    tep = simulator()
    version = importlib.metadata.version("tep-studio")
    n_faults = len(tep.TEP_SCHEMA.disturbances)
    faults = protocol.faults if protocol.faults is not None else tuple(range(1, n_faults + 1))
    lacking = [f for f in faults if not 1 <= f <= n_faults]
    if lacking:
        raise DataError(f"tep: fault IDV {lacking[0]} is not in tep-studio {version}, which has IDV 1-{n_faults} "
                        "(normal operation is always simulated)")
    protocol = Protocol(faults=tuple(faults), seeds=protocol.seeds, train=protocol.train, test=protocol.test,
                        onset=protocol.onset, warmup=protocol.warmup)
    key = {"format": CACHE_FORMAT, "simulator": "tep-studio", "version": version, **asdict(protocol),
           "control_interval_h": CONTROL_INTERVAL_H, "sample_minutes": SAMPLE_MINUTES}
    key = json.loads(json.dumps(key))  # tuples as lists, as the cache file's JSON gives them back
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = (cache or cache_dir()) / f"tep-studio-{version}-{digest}.npz"
    if path.is_file():
        data = _read_cache(path, key, protocol, version)
        if data is not None:
            return data
        if log:
            log(f"tep: {path} is unreadable or stale; simulating again")
    return _simulate(tep, protocol, version, key, path, log)


def _kernel_seed(seed: int, split: int, fault: int) -> float:
    """A distinct noise seed per run: runs sharing one noise stream would make a fault's residual noise-free.

    The Downs-Vogel generator is g <- g * 9228907 mod 2^32 on doubles; g = 0 would stay 0, so the seed is odd.
    """
    g = int(np.random.SeedSequence([seed, split, fault]).generate_state(1, np.uint32)[0])
    return float(g | 1)


def _run(tep, fault: int, samples: int, onset: int, seed: float, n_idv: int,
         warmup: int = 0) -> tuple[np.ndarray, str | None]:
    """One closed-loop run: `warmup` unrecorded samples of normal operation, then (samples, 53) float32
    measurements and manipulated variables with the fault on from recorded sample `onset`; and the shutdown
    message when the plant tripped (the array is then shorter)."""
    sim, controller = tep.TennesseeEastmanProcess(), tep.RickerMultiLoopController()
    meas, _ = sim.reset(seed=seed)
    controller.reset(meas, time=sim.time)
    normal, faulty = np.zeros(n_idv), np.zeros(n_idv)
    if fault:
        faulty[fault - 1] = 1.0
    out = []
    fault_step, record_step = (warmup + onset) * STEPS_PER_SAMPLE, warmup * STEPS_PER_SAMPLE
    for step in range((warmup + samples) * STEPS_PER_SAMPLE):
        action, _ = controller.compute_action(meas, time=sim.time)
        result = sim.advance(action, control_interval=CONTROL_INTERVAL_H,
                             disturbances=faulty if step >= fault_step else normal)
        meas = result.measurements
        if result.shutdown_status["terminated"]:
            width = meas.size + result.implemented_action.size  # 41 + 12
            return np.array(out, dtype=np.float32).reshape(-1, width), str(result.shutdown_status["message"])
        if step >= record_step and (step + 1) % STEPS_PER_SAMPLE == 0:
            out.append(np.concatenate([meas, result.implemented_action]))
    return np.array(out, dtype=np.float32), None


def _simulate(tep, protocol: Protocol, version: str, key: dict, path: Path, log) -> TEPData:
    n_idv = len(tep.TEP_SCHEMA.disturbances)
    names = [m[0] for m in tep.list_measurements()] + [m[0] for m in tep.list_manipulated_variables()]
    units = [m[1] for m in tep.list_measurements()] + [m[1] for m in tep.list_manipulated_variables()]
    started = time.perf_counter()
    shutdowns: list[dict] = []
    splits = {}
    for split_index, (split, samples, onset) in enumerate((("train", protocol.train, 0),
                                                           ("test", protocol.test, protocol.onset))):
        runs = [(f, s) for f in (0, *protocol.faults) for s in protocol.seeds]
        x = np.zeros((len(runs), len(names), samples), dtype=np.float32)
        length = np.zeros(len(runs), dtype=np.int64)
        for r, (fault, seed) in enumerate(runs):
            if log:
                log(f"tep: simulating {split} run {r + 1}/{len(runs)} (IDV {fault}, seed {seed})")
            values, message = _run(tep, fault, samples, onset, _kernel_seed(seed, split_index, fault), n_idv,
                                   protocol.warmup)
            x[r, :, : len(values)] = values.T
            length[r] = len(values)
            if message is not None:
                shutdowns.append({"split": split, "fault": fault, "seed": seed, "sample": len(values),
                                  "message": message})
        splits[split] = Runs(x, np.array([f for f, _ in runs], dtype=np.int64),
                             np.array([s for _, s in runs], dtype=np.int64), length, onset)
    meta = {"key": key, "seconds": round(time.perf_counter() - started, 2), "shutdowns": shutdowns,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "measurements": len(tep.list_measurements())}
    arrays = {"channel_names": np.array(names), "channel_units": np.array(units), "meta": np.array(json.dumps(meta))}
    for split, runs in splits.items():
        arrays.update({f"{split}_x": runs.x, f"{split}_fault": runs.fault, f"{split}_seed": runs.seed,
                       f"{split}_length": runs.length})
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return TEPData(splits["train"], splits["test"], names, units, protocol, version, path, meta)


def _read_cache(path: Path, key: dict, protocol: Protocol, version: str) -> TEPData | None:
    """The cached runs, or None when the file is unreadable or was written for another key."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key:
                return None
            splits = {s: Runs(z[f"{s}_x"], z[f"{s}_fault"], z[f"{s}_seed"], z[f"{s}_length"],
                              protocol.onset if s == "test" else 0) for s in ("train", "test")}
            names, units = [str(n) for n in z["channel_names"]], [str(u) for u in z["channel_units"]]
    except (*ZIP_ERRORS, KeyError):  # a damaged file: simulate again
        return None
    return TEPData(splits["train"], splits["test"], names, units, protocol, version, path, meta)
