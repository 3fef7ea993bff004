"""Class transfer with a conditional VAE: the small-image form of style transfer.

A conditional VAE learns q(z | x, y) and p(x | z, y). Given the class, the
latent z has no reason to encode it again, so it keeps what the class does not
say: pose, slant, stroke width, size (Kingma et al. 2014, "Semi-supervised
learning with deep generative models", section 4.2 and figure 1, "analogies").
Transfer encodes an image with its own class and decodes the posterior mean
with another:

    z = mu(x, y_source)               (b, z_dim)
    x' = sigmoid(decoder(z, y_target))  (b, c, h, w)

When the source class is not given, it is the one under which the image is
most likely for the model: the class with the lowest negative ELBO
(reconstruction + KL at the posterior mean), which is the model's own Bayes
classifier under a uniform class prior.
"""

from __future__ import annotations

import numpy as np
import torch

from genforge.apps.repair import check_images
from genforge.data import to_tensor
from genforge.errors import GenforgeError
from genforge.generation.sampling import class_indices, to_uint8
from genforge.models import vae


def check_model(model) -> None:
    """Only a conditional VAE can transfer: it needs an encoder and a decoder that both take the class."""
    if model.family != "vae" or not model.num_classes:
        kind = f"a conditional {model.family}" if model.num_classes else f"an unconditional {model.family}"
        raise GenforgeError(f"class transfer needs a conditional VAE (e.g. genforge/recipes/mnist5k-cvae-conv.yaml); "
                            f"the model {model.name} at {model.path or '(in memory)'} is {kind}")


@torch.no_grad()
def infer_classes(model, x: np.ndarray) -> np.ndarray:
    """The class of each image (n,) under which the conditional VAE finds it most likely (lowest -ELBO)."""
    check_model(model)
    t = to_tensor(check_images(model, x), vae.VALUE_RANGE).to(model.device)  # (n, c, h, w)
    recon = model.meta.get("train_config", {}).get("recon_loss", "bce")
    scores = []
    for c in range(model.num_classes):
        y = torch.full((len(t),), c, dtype=torch.long, device=t.device)
        mu, logvar = model.nets["encoder"](t, y)
        rec, kl = vae.elbo_terms(t, model.nets["decoder"](mu, y), mu, logvar, recon)
        scores.append(rec + kl)                                   # (n,) -ELBO at the posterior mean
    return torch.stack(scores, 1).argmin(1).cpu().numpy()


@torch.no_grad()
def transfer(model, x: np.ndarray, to, source=None) -> tuple[np.ndarray, np.ndarray]:
    """Draw each image as each class in ``to``.

    x: uint8 (n, h, w) or (n, h, w, c) of the model's size. to: one class or a list (indices or names).
    source: the images' own classes (one for all, or one per image); inferred with :func:`infer_classes`
    when None. Returns (images uint8 (n, len(to), h, w[, c]), the source classes (n,)).
    """
    check_model(model)
    x = check_images(model, x)
    n = len(x)
    targets = list(to) if isinstance(to, (list, tuple, np.ndarray)) else [to]
    targets = class_indices(model, targets, len(targets))
    if source is None:
        src = infer_classes(model, x)
    else:
        given = list(source) if isinstance(source, (list, tuple, np.ndarray)) else [source]
        if len(given) not in (1, n):
            raise GenforgeError(f"source classes: give one for all images or one per image ({n}), got {len(given)}")
        src = class_indices(model, given, n)
    t = to_tensor(x, vae.VALUE_RANGE).to(model.device)
    mu, _ = model.nets["encoder"](t, torch.from_numpy(src).to(t.device))           # (n, z_dim)
    k = len(targets)
    z = mu.repeat_interleave(k, 0)                                                   # (n*k, z_dim)
    y = torch.from_numpy(np.tile(targets, n)).to(t.device)                           # (n*k,)
    out = to_uint8(vae.generate(model.nets, z, y)).cpu().numpy()                     # (n*k, h, w, c)
    out = out.reshape(n, k, *out.shape[1:])
    return (out[..., 0] if out.shape[-1] == 1 else out), src
