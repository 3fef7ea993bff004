"""Networks and model files: shapes, save/load round trips, and refusal of damaged or hostile files."""

import json
import struct

import pytest
import torch

import genforge
from genforge.errors import ConfigError, ModelFileError
from genforge.generation import GenerativeModel
from genforge.models import MODELS, build_networks
from genforge.models.files import save_model
from genforge.models.networks import DCGANGenerator


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("size", ["small", "large"])
def test_network_shapes(model, size):
    """Every network builds and runs on examples of its axes: images (1, 28, 28), (3, 32, 32); series of
    lengths that are and are not a power of two times 4..8 ((2, 8), (3, 150))."""
    two_d = MODELS[model].axes == ("c", "h", "w")
    shape = {("small", True): (1, 28, 28), ("large", True): (3, 32, 32),
             ("small", False): (2, 8), ("large", False): (3, 150)}[size, two_d]
    torch.manual_seed(0)
    k = 3 if MODELS[model].conditional else 0
    nets = build_networks(model, shape, z_dim=8, base_channels=4, num_classes=k)
    z_dim = MODELS[model].method.latent_dim(8, shape)  # diffusion: the noise image
    x, z, y = torch.rand(2, *shape), torch.randn(2, z_dim), (torch.tensor([0, 2]) if k else None)
    method = MODELS[model].method
    assert method.generate(nets, z, y).shape == (2, *shape)
    if "discriminator" in nets:
        assert nets["discriminator"](x, y).shape == (2,)
    if "encoder" in nets:
        mu, logvar = nets["encoder"](x, y)
        assert mu.shape == logvar.shape == (2, 8)


def test_conditional_needs_classes():
    with pytest.raises(ConfigError, match="'cdcgan' is class-conditional"):
        build_networks("cdcgan", (1, 28, 28), z_dim=8, base_channels=4)
    with pytest.raises(ConfigError, match="MLPGenerator is unconditional"):
        MODELS["gan-mlp"].networks["generator"]((1, 28, 28), 8, 0, num_classes=3)


def test_reference_mlp_gan_architecture():
    nets = build_networks("gan-mlp", (1, 28, 28), z_dim=100, base_channels=0)
    widths = [m.out_features for m in nets["generator"].modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [128, 256, 512, 1024, 784]
    widths = [m.out_features for m in nets["discriminator"].modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [1024, 512, 256, 1]


def test_unsuitable_image_size_is_clear():
    with pytest.raises(ConfigError, match="image_size 30 does not suit"):
        DCGANGenerator((1, 30, 30), 8, 4)


SERIES_TRANSFORM = {"kind": "series", "channel_names": ["a", "b"],
                    "normalization": {"method": "minmax", "shift": [0.0, 100.0], "scale": [1.0, 3.0]}}


def _saved(tmp_path, model="dcgan"):
    torch.manual_seed(0)
    k = 3 if MODELS[model].conditional else 0
    if MODELS[model].axes == ("c", "h", "w"):
        shape, extra = [1, 28, 28], {"modality": "image"}
    else:
        shape, extra = [2, 40], {"modality": "series", "transform": SERIES_TRANSFORM}
    z_dim = MODELS[model].method.latent_dim(8, shape)
    nets = build_networks(model, tuple(shape), z_dim=z_dim, base_channels=4, num_classes=k)
    meta = {"model": model, "example_shape": shape, "z_dim": z_dim, "base_channels": 4, "num_classes": k, **extra}
    return save_model(tmp_path / "m", nets, meta), nets


@pytest.mark.parametrize("model", MODELS)
def test_save_load_round_trip(tmp_path, model):
    path, nets = _saved(tmp_path, model)
    loaded = genforge.load(path)
    assert isinstance(loaded, GenerativeModel) and loaded.name == model
    for role, net in nets.items():
        for (k, a), b in zip(net.state_dict().items(), loaded.nets[role].state_dict().values()):
            assert torch.equal(a, b), k


def test_truncated_weights_refused(tmp_path):
    path, _ = _saved(tmp_path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="outside the file"):
        genforge.load(path)
    weights.write_bytes(b"\x01")
    with pytest.raises(ModelFileError, match="truncated"):
        genforge.load(path)


def test_altered_weights_refused(tmp_path):
    path, _ = _saved(tmp_path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # flip bits in the last tensor: header still fine, hash is not
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        genforge.load(path)


def test_header_claiming_huge_size_refused_before_reading(tmp_path):
    path, _ = _saved(tmp_path)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(ModelFileError, match="header claims"):
        genforge.load(path)


def test_config_json_disagreeing_with_weights_refused(tmp_path):
    path, _ = _saved(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["z_dim"] = 9
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="config.json needs"):
        genforge.load(path)
    meta["model"] = "nope"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="unknown model 'nope'"):
        genforge.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        genforge.load(path)


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelFileError, match="model not found: .*nowhere"):
        genforge.load(tmp_path / "nowhere")
    with pytest.raises(ModelFileError, match="not a model or run directory"):
        genforge.load(tmp_path)
