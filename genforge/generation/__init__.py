"""Generation: the one sampling function every entry point calls, and writers for its output.

``sample(model, n, seed)`` is a pure function of (model, seed, controls): the
CLI, the Python API and later the evaluator and the HTTP service call it, so a
seed gives the same pixels everywhere.
"""

from genforge.generation.sampling import Samples, class_indices, latents, sample, to_uint8
from genforge.generation.writers import make_grid, save_grid, save_npz, write_samples

__all__ = ["Samples", "class_indices", "latents", "sample", "to_uint8", "make_grid", "save_grid", "save_npz", "write_samples"]
