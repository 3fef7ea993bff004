"""genforge: generative models you can trust, from raw data to served samples.

GAN, VAE and diffusion families on images today (sensor series, tables, text and audio are next), one
explicit training loop with exact resume, one generation plan, evaluation with a real-data reference row,
an HTTP service and web page, encryption at rest and differential privacy.

    import genforge
    model = genforge.load("runs/mnist5k-dcgan")        # a run directory or a model directory
    samples = model.sample(64, seed=0, truncation=0.7)  # .x uint8 (64, 28, 28); .images PIL; .y; .z

The package is layered; each layer imports only those below it (``tests/test_layers.py``):
``errors``, ``io``, ``crypto`` / ``controls``, ``config``, ``modalities`` / ``data`` / ``models`` /
``generation`` / ``postprocess`` / ``metrics`` / ``training`` / ``apps`` / ``export`` / ``security`` /
``serve`` / ``cli``.
"""

from genforge.version import __version__


def load(path, device: str = "auto"):
    """Load a trained model from a run directory or a model directory (config.json + model.safetensors).

    ``device``: "auto" (CUDA, then MPS, then the CPU), "cpu", "cuda", "cuda:N" or "mps". Returns a
    :class:`~genforge.generation.model.GenerativeModel`; ``model.sample(n, seed=..., **controls)`` draws samples.
    """
    from genforge.generation.model import load as _load  # late: `import genforge` stays free of torch

    return _load(path, device=device)


__all__ = ["load", "__version__"]
