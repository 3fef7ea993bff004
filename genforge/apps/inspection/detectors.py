"""The anomaly detectors of ``genforge inspect``: one interface, four methods.

Every detector learns from normal images only and answers one question per image: how unlike the
training images is it? They share one small interface, so the fitting, thresholding, saving and
scoring code in ``inspection.py`` is the same for all of them:

    det = DETECTORS["vae"](image_shape, **options)
    det.fit(x_train, seed)              # x: float32 (n, c, h, w) in [0, 1], normal images only
                                        # (log: a callable for notes; progress: a bar over training steps)
    score, residual = det.score(x)      # (n,) float64, higher is more anomalous; (n, h, w) float32 heat map
    det.tensors()                       # everything learnt, for safetensors; det.options() for the JSON
    det.to(device)                      # where fit and score compute: they follow x's device, scores come back
                                        # as numpy; batch order and seeds are drawn on the CPU on every device

``vae`` and ``ganomaly`` are the generative detectors (genforge's own networks and VAE method);
``pca`` and ``knn`` are the baselines they must beat.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from genforge.config import Config
from genforge.errors import GenforgeError, TrainingError
from genforge.models import networks, vae

SCORE_BATCH = 256  # fixed, so that a detector scores an image the same whatever else is in the call


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _train_batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """Index batches for ``steps`` steps: reshuffled every epoch, the same for the same generator."""
    batch = min(batch_size, n)
    per_epoch = max(1, n // batch)
    for step in range(steps):
        i = step % per_epoch
        if i == 0:
            perm = torch.randperm(n, generator=gen)
        yield perm[i * batch:(i + 1) * batch]


def _steps(batches, steps: int, desc: str, progress: bool):
    """``batches`` with a bar over the training steps on stderr when ``progress`` (it draws no random numbers)."""
    return tqdm(batches, total=steps, desc=desc, unit="step", disable=not progress, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _standardize(values: np.ndarray, stats: dict) -> np.ndarray:
    return (values - stats["mean"]) / stats["std"]


def _stats(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "std": float(max(values.std(), 1e-12))}


# ------------------------------------------------------------------------------------------- baselines


class PCADetector:
    """Baseline: squared error of the reconstruction from the top principal components of the normal images.

    The number of components is the fewest that explain ``variance`` of the training pixels' variance.
    """

    name = "pca"

    def __init__(self, image_shape, variance: float = 0.9, n_components: int = 0):
        self.image_shape = tuple(image_shape)
        self.variance = float(variance)
        if not 0 < self.variance <= 1:
            raise GenforgeError(f"pca detector: option variance must be in (0, 1], got {variance!r}")
        d = math.prod(self.image_shape)
        self.mean = torch.zeros(d, dtype=torch.float64)
        self.components = torch.zeros(n_components, d, dtype=torch.float64)  # (k, d), orthonormal rows

    def options(self) -> dict:
        return {"variance": self.variance, "n_components": int(self.components.shape[0])}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "components": self.components}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.mean, self.components = tensors["mean"], tensors["components"]

    def fit(self, x: torch.Tensor, seed: int = 0, log=None, progress: bool = False) -> None:
        from sklearn.decomposition import PCA  # heavy import (~1-3 s with scipy): only the pca detector fits with it

        flat = _numpy(x.flatten(1).cpu().double())            # (n, d)
        # a float n_components: the fewest components whose explained variance exceeds that share
        # (1.0, every component, is None to scikit-learn)
        pca = PCA(n_components=self.variance if self.variance < 1 else None, svd_solver="full").fit(flat)
        self.mean = torch.from_numpy(pca.mean_).double()
        self.components = torch.from_numpy(np.ascontiguousarray(pca.components_)).double()  # (k, d)
        if log:
            log(f"pca: {self.components.shape[0]} components explain {100 * self.variance:g}% of the variance")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).double() - self.mean              # (n, d)
        proj = flat @ self.components.T @ self.components     # (n, d)
        return (proj + self.mean).view(x.shape)

    def score(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = x.cpu()
        err = (x.double() - self.reconstruct(x)).square().mean(1)  # (n, h, w), channel mean
        return _numpy(err.flatten(1).sum(1)), _numpy(err.float())

    def to(self, device) -> None:
        """Stays on the CPU: a float64 baseline (MPS has no float64), cheap there, the same scores everywhere."""


class KNNDetector:
    """Baseline: mean Euclidean distance to the k nearest training images, on raw pixels.

    Keeps at most ``bank_size`` training images (a seeded random subset). The heat map is the absolute
    difference to the nearest one.
    """

    name = "knn"

    def __init__(self, image_shape, k: int = 5, bank_size: int = 5000, n_bank: int = 0):
        self.image_shape = tuple(image_shape)
        self.k, self.bank_size = int(k), int(bank_size)
        self.bank = torch.zeros(n_bank, math.prod(self.image_shape))  # (m, d) float32

    def options(self) -> dict:
        return {"k": self.k, "bank_size": self.bank_size, "n_bank": int(self.bank.shape[0])}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.bank = tensors["bank"]

    def fit(self, x: torch.Tensor, seed: int = 0, log=None, progress: bool = False) -> None:
        flat = x.cpu().flatten(1).float()
        if len(flat) > self.bank_size:
            keep = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:self.bank_size]
            flat = flat[keep.sort().values]
        self.bank = flat.contiguous()

    def to(self, device) -> None:
        """Stays on the CPU, as the pca detector does (float64 distances)."""

    def score(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = x.cpu()
        k = min(self.k, len(self.bank))
        bank_sq = self.bank.double().square().sum(1)              # (m,)
        scores, residuals = [], []
        for sl in _batches(len(x), SCORE_BATCH):
            q = x[sl].flatten(1).float()                           # (b, d)
            # ||q - b||^2 = ||q||^2 + ||b||^2 - 2 q.b, in float64 so near neighbours do not cancel to noise
            d2 = (q.double().square().sum(1, keepdim=True) + bank_sq - 2 * q.double() @ self.bank.double().T)
            d2, idx = d2.clamp_min(0).topk(k, dim=1, largest=False)  # (b, k)
            scores.append(d2.sqrt().mean(1))
            nearest = self.bank[idx[:, 0]].view(-1, *self.image_shape)
            residuals.append((x[sl].float() - nearest).abs().mean(1))  # (b, h, w)
        return _numpy(torch.cat(scores)), _numpy(torch.cat(residuals))


# ------------------------------------------------------------------------------------------- generative


def _conv_nets(image_shape, z_dim: int, base_channels: int, roles: dict[str, str]) -> dict[str, nn.Module]:
    """genforge's own networks (``genforge.models.networks``) for the roles a detector needs."""
    kinds = {"encoder": networks.ConvEncoder, "decoder": networks.ConvDecoder,
             "discriminator": networks.DCGANDiscriminator}
    return {role: kinds[kind](tuple(image_shape), z_dim=z_dim, base_channels=base_channels)
            for role, kind in roles.items()}


def _net_tensors(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{role}.{k}": v.detach() for role, net in nets.items()
            for k, v in net.state_dict().items()}


def _load_nets(nets: dict[str, nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    for role, net in nets.items():
        prefix = f"{role}."
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        net.eval().requires_grad_(False)


class VAEDetector:
    """A convolutional VAE (``vae-conv``: genforge's ConvEncoder / ConvDecoder and the VAE method's ELBO step)
    trained on normal images; what it cannot reconstruct is suspect (An and Cho 2015).

    Per image it measures, through the posterior mean z = mu(x) (no sampling, so scores are deterministic):
      residual  sum of squared pixel errors |x - x_hat|^2           (the reconstruction error)
      elbo      Bernoulli negative log-likelihood + KL(q(z|x) || p(z))  (the negative ELBO at z = mu)
      latent    mean distance of mu(x) to its k nearest training codes   (how far from normal in the code space)
    ``score`` picks one, or "combined" (the default): log residual + latent, each standardized by its mean
    and spread on calibration images, a tenth of the normal training images held out of training (training
    images reconstruct better than new ones; standardizing on them would overweight the residual). Why these
    two: they fail in opposite places. The residual misses anomalies with little ink, easy to draw (a "1"
    among other digits); the latent distance misses anomalies the encoder maps onto normal codes. The ELBO
    is mostly the reconstruction term again (Bernoulli instead of squared error), so it is left out.
    Measured on both protocols in benchmarks/RESULTS.md.
    """

    name = "vae"
    SCORES = ("residual", "elbo", "latent", "combined")

    def __init__(self, image_shape, z_dim: int = 16, base_channels: int = 32, steps: int = 600,
                 batch_size: int = 64, lr: float = 1e-3, score: str = "combined", k: int = 5,
                 bank_size: int = 2000, n_bank: int = 0, stats: dict | None = None):
        if score not in self.SCORES:
            raise GenforgeError(f"vae: unknown score {score!r}; choose one of {', '.join(self.SCORES)}")
        self.image_shape = tuple(image_shape)
        self.z_dim, self.base_channels, self.steps = int(z_dim), int(base_channels), int(steps)
        self.batch_size, self.lr, self.score_kind, self.k = int(batch_size), float(lr), score, int(k)
        self.bank_size = int(bank_size)
        self.nets = _conv_nets(self.image_shape, self.z_dim, self.base_channels,
                               {"encoder": "encoder", "decoder": "decoder"})
        self.bank = torch.zeros(n_bank, self.z_dim)           # (m, z_dim) training codes
        self.stats = stats or {}                               # component -> {"mean", "std"} on calibration images

    def options(self) -> dict:
        return {"z_dim": self.z_dim, "base_channels": self.base_channels, "steps": self.steps,
                "batch_size": self.batch_size, "lr": self.lr, "score": self.score_kind, "k": self.k,
                "bank_size": self.bank_size, "n_bank": int(self.bank.shape[0]), "stats": self.stats}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**_net_tensors(self.nets), "bank": self.bank}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        _load_nets(self.nets, tensors)
        self.bank = tensors["bank"]

    def to(self, device) -> None:
        for net in self.nets.values():
            net.to(device)
        self.bank = self.bank.to(device)

    def fit(self, x: torch.Tensor, seed: int = 0, log=None, progress: bool = False) -> None:
        # The fields vae.Trainer reads; the detector's own options were checked when it was built.
        cfg = Config(model="vae-conv", recon_loss="bce", kl_weight=1.0, g_lr=self.lr, g_betas=[0.9, 0.999],
                     z_dim=self.z_dim, base_channels=self.base_channels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.nets = _conv_nets(self.image_shape, self.z_dim, self.base_channels,
                                   {"encoder": "encoder", "decoder": "decoder"})  # built on the CPU: same start
            for net in self.nets.values():
                net.to(x.device).train()
            trainer = vae.Trainer(cfg, self.nets)   # the same ELBO step `genforge train` runs
            gen = torch.Generator().manual_seed(seed + 1)
            # the ELBO's noise: on the CPU, the batch order's generator as before; elsewhere one on x's device
            noise = gen if x.device.type == "cpu" else torch.Generator(device=x.device).manual_seed(seed + 1)
            order = torch.randperm(len(x), generator=gen)
            held = max(1, len(x) // 10)                  # calibration images: never trained on
            x_cal, x = x[order[:held].sort().values], x[order[held:].sort().values]
            for step, idx in enumerate(_steps(_train_batches(len(x), self.batch_size, self.steps, gen), self.steps,
                                              "vae detector", progress)):
                out = trainer.train_step(x[idx], None, noise, step)
                if not torch.isfinite(out["loss"]):
                    raise TrainingError(f"vae detector: non-finite loss at step {step}; lower lr (now {self.lr})")
                if log and (step + 1) % 200 == 0:
                    log(f"vae: step {step + 1}/{self.steps}: -elbo {out['loss'].item():.1f}")
        for net in self.nets.values():
            net.eval().requires_grad_(False)
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 2))[:self.bank_size]
        self.bank = self._parts(x[keep.sort().values])["mu"]
        self.stats = {}
        comps, _ = self.components(x_cal)
        comps["residual"] = np.log(comps["residual"] + 1e-12)
        self.stats = {name: _stats(values) for name, values in comps.items()}

    @torch.no_grad()
    def _parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"mu": [], "residual": [], "elbo": [], "map": []}
        for sl in _batches(len(x), SCORE_BATCH):
            xb = x[sl]
            mu, logvar = self.nets["encoder"](xb)              # (b, z_dim) each
            logits = self.nets["decoder"](mu)                  # (b, c, h, w)
            err = (torch.sigmoid(logits) - xb).square()
            bce = F.binary_cross_entropy_with_logits(logits, xb, reduction="none").flatten(1).sum(1)
            kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)
            out["mu"].append(mu)
            out["residual"].append(err.flatten(1).sum(1))
            out["elbo"].append(bce + kl)
            out["map"].append(err.mean(1))                      # (b, h, w)
        return {k: torch.cat(v) for k, v in out.items()}

    def _latent_distance(self, mu: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(mu.cpu().double(), self.bank.cpu().double())  # (n, m), float64 on the CPU (not on MPS)
        return d.topk(min(self.k, len(self.bank)), dim=1, largest=False).values.mean(1)

    def components(self, x: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every score this VAE gives, by name (higher: more anomalous), and the residual maps (n, h, w).

        The residual enters the combined score as a logarithm: its spread grows with its size, and the log
        makes its standardized values comparable to the latent distance's.
        """
        parts = self._parts(x)
        residual = _numpy(parts["residual"].cpu().double())
        comps = {"residual": residual, "elbo": _numpy(parts["elbo"].cpu().double()),
                 "latent": _numpy(self._latent_distance(parts["mu"]))}
        if self.stats:
            logs = {**comps, "residual": np.log(residual + 1e-12)}
            comps["combined"] = sum(_standardize(logs[name], self.stats[name]) for name in ("residual", "latent"))
        return comps, _numpy(parts["map"])

    def score(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        comps, maps = self.components(x)
        return comps[self.score_kind], maps


class GANomalyDetector:
    """GANomaly (Akcay et al. 2018): an encoder-decoder-encoder generator trained adversarially on normal images.

    G_E encodes x to z, G_D decodes z to x_hat, E encodes x_hat again to z_hat; a discriminator D pushes x_hat
    towards the normal images. The anomaly score is the latent inconsistency |z - z_hat|^2 (the paper's
    eq. 7); the heat map is |x - x_hat|. Networks are genforge's ConvEncoder (its mu head as the code),
    ConvDecoder and DCGANDiscriminator. Loss weights follow the paper: adversarial (feature matching) 1,
    contextual (L1) 50, encoder (L2) 1.
    """

    name = "ganomaly"
    SCORES = ("latent", "residual")

    def __init__(self, image_shape, z_dim: int = 16, base_channels: int = 32, steps: int = 600,
                 batch_size: int = 64, lr: float = 2e-4, w_adv: float = 1.0, w_con: float = 50.0,
                 w_enc: float = 1.0, score: str = "latent"):
        if score not in self.SCORES:
            raise GenforgeError(f"ganomaly: unknown score {score!r}; choose one of {', '.join(self.SCORES)}")
        self.score_kind = score
        self.image_shape = tuple(image_shape)
        self.z_dim, self.base_channels, self.steps = int(z_dim), int(base_channels), int(steps)
        self.batch_size, self.lr = int(batch_size), float(lr)
        self.w_adv, self.w_con, self.w_enc = float(w_adv), float(w_con), float(w_enc)
        self.nets = self._build()

    def _build(self) -> dict[str, nn.Module]:
        return _conv_nets(self.image_shape, self.z_dim, self.base_channels,
                          {"g_encoder": "encoder", "g_decoder": "decoder", "encoder": "encoder",
                           "discriminator": "discriminator"})

    def options(self) -> dict:
        return {"z_dim": self.z_dim, "base_channels": self.base_channels, "steps": self.steps,
                "batch_size": self.batch_size, "lr": self.lr, "w_adv": self.w_adv, "w_con": self.w_con,
                "w_enc": self.w_enc, "score": self.score_kind}

    def tensors(self) -> dict[str, torch.Tensor]:
        return _net_tensors(self.nets)

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        _load_nets(self.nets, tensors)

    def to(self, device) -> None:
        for net in self.nets.values():
            net.to(device)

    def _generate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.nets["g_encoder"](x)[0]                         # (b, z_dim)
        x_hat = torch.sigmoid(self.nets["g_decoder"](z))         # (b, c, h, w) in [0, 1]
        z_hat = self.nets["encoder"](x_hat)[0]                   # (b, z_dim)
        return z, x_hat, z_hat

    def fit(self, x: torch.Tensor, seed: int = 0, log=None, progress: bool = False) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.nets = self._build()  # built on the CPU: the same start on every device
        self.to(x.device)
        nets = self.nets
        for net in nets.values():
            net.train()
        g_params = [p for role in ("g_encoder", "g_decoder", "encoder") for p in nets[role].parameters()]
        opt_g = torch.optim.Adam(g_params, lr=self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(nets["discriminator"].parameters(), lr=self.lr, betas=(0.5, 0.999))
        D = nets["discriminator"]
        gen = torch.Generator().manual_seed(seed + 1)
        for step, idx in enumerate(_steps(_train_batches(len(x), self.batch_size, self.steps, gen), self.steps,
                                          "ganomaly detector", progress)):
            real = x[idx] * 2 - 1                                # D was built for tanh images in [-1, 1]
            z, x_hat, z_hat = self._generate(x[idx])
            fake = x_hat * 2 - 1
            # (1) update D: maximize log D(x) + log(1 - D(G(x)))
            d_loss = F.softplus(-D(real)).mean() + F.softplus(D(fake.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            # (2) update G_E, G_D, E: feature matching + contextual L1 + latent L2 (GANomaly eq. 4-6)
            adv = (D.features(real).flatten(1).mean(0) - D.features(fake).flatten(1).mean(0)).square().mean()
            con = (x[idx] - x_hat).abs().mean()
            enc = (z - z_hat).square().mean()
            g_loss = self.w_adv * adv + self.w_con * con + self.w_enc * enc
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            if not torch.isfinite(g_loss):
                raise TrainingError(f"ganomaly detector: non-finite loss at step {step}; lower lr (now {self.lr})")
            if d_loss.item() < 1e-5:  # D has won outright: re-initialize it, as the GANomaly code does
                for module in D.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
            if log and (step + 1) % 200 == 0:
                log(f"ganomaly: step {step + 1}/{self.steps}: d {d_loss.item():.3f} con {con.item():.4f} "
                    f"enc {enc.item():.4f}")
        for net in nets.values():
            net.eval().requires_grad_(False)

    @torch.no_grad()
    def components(self, x: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Both scores by name: "latent" |z - z_hat|^2 (the paper's) and "residual" sum |x - x_hat|; the maps."""
        latent, residual, maps = [], [], []
        for sl in _batches(len(x), SCORE_BATCH):
            z, x_hat, z_hat = self._generate(x[sl])
            err = (x[sl] - x_hat).abs()                          # (b, c, h, w)
            latent.append((z - z_hat).square().mean(1).cpu().double())
            residual.append(err.flatten(1).sum(1).cpu().double())
            maps.append(err.mean(1))
        return ({"latent": _numpy(torch.cat(latent)), "residual": _numpy(torch.cat(residual))},
                _numpy(torch.cat(maps)))

    def score(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        comps, maps = self.components(x)
        return comps[self.score_kind], maps


# A registry is a dict literal: name -> detector class.
DETECTORS = {"vae": VAEDetector, "ganomaly": GANomalyDetector, "pca": PCADetector, "knn": KNNDetector}
