"""Generation: the loaded model, the one generation plan every entry point calls, steering, and the writers.

``sample(model, n, seed, classes, **controls)`` (``plan`` then ``render``) is a pure function of (model, seed,
controls): the CLI, the Python API, training grids and validation, the evaluator and the HTTP service call
it, so a seed gives the same pixels everywhere. ``steering`` chooses latents for interpolations, class
sweeps and feedback rounds; ``writers`` and ``provenance`` write the outputs with their metadata.
"""

from genforge.generation.model import GenerativeModel, load
from genforge.generation.sampling import (Plan, Samples, class_indices, decode, latents, plan, render, resize,
                                          sample, to_uint8, truncated_latents)
from genforge.generation.steering import class_sweep, feedback, interpolate, save_gif, slerp
from genforge.generation.writers import make_grid, read_sidecar, save_grid, save_npz, save_png, write_samples

__all__ = ["GenerativeModel", "load", "Plan", "plan", "render", "Samples", "class_indices", "decode", "latents", "resize", "sample", "to_uint8", "truncated_latents",
           "class_sweep", "feedback", "interpolate", "save_gif", "slerp",
           "make_grid", "read_sidecar", "save_grid", "save_npz", "save_png", "write_samples"]
