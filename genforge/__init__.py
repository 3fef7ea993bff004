"""genforge: generative image models you can trust, from raw data to served samples.

    import genforge
    model = genforge.load("runs/mnist5k-dcgan")   # a run directory or a model directory
    images = model.sample(64, seed=0)             # uint8 (64, 28, 28)

Layout: ``data`` (preprocessing), ``models`` (networks and the GAN / VAE
methods), ``training`` (the loop, checkpoints), ``generation`` (sampling).
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a trained model from a run directory or a model directory (config.json + model.safetensors)."""
    from genforge.models.files import load as _load

    return _load(path, device=device)


__all__ = ["load", "__version__"]
