"""Generation: the one sampling function every entry point calls, steering, and writers for its output.

``sample(model, n, seed, ...controls)`` is a pure function of (model, seed,
controls): the CLI, the Python API and later the evaluator and the HTTP
service call it, so a seed gives the same pixels everywhere. ``steering``
chooses latents for interpolations, class sweeps and feedback rounds.
"""

from genforge.generation.sampling import (Samples, class_indices, decode, latents, resize, sample, to_uint8,
                                          truncated_latents)
from genforge.generation.steering import class_sweep, feedback, interpolate, save_gif, slerp
from genforge.generation.writers import make_grid, read_sidecar, save_grid, save_npz, save_png, write_samples

__all__ = ["Samples", "class_indices", "decode", "latents", "resize", "sample", "to_uint8", "truncated_latents",
           "class_sweep", "feedback", "interpolate", "save_gif", "slerp",
           "make_grid", "read_sidecar", "save_grid", "save_npz", "save_png", "write_samples"]
