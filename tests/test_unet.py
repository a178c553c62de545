from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.nets.unet import UNet, check_divisible
from tests.conftest import compose_config

MODELS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))


# unet512 at its 512 px is the slow tier's (seconds on a CPU)
@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m == "unet512" else m for m in MODELS])
def test_output_shape_equals_input_shape(model: str) -> None:
    cfg = compose_config([f"model={model}"])
    net = instantiate(cfg.model.net).eval()
    size = cfg.model.image_size
    with torch.no_grad():
        out = net(torch.rand(1, 3, size, size))
    assert out.shape == (1, 3, size, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear", "nearest"])
def test_width_depth_norm_upsampling_options(norm: str, upsampling: str) -> None:
    net = UNet(base_channels=4, depth=2, norm=norm, upsampling=upsampling).eval()
    assert net(torch.rand(2, 3, 12, 20)).shape == (2, 3, 12, 20)


def test_indivisible_size_is_a_clear_error() -> None:
    net = UNet(base_channels=4, depth=3)
    with pytest.raises(ValueError, match=r"^image_size=36: must be a multiple of 2\*\*depth = 8 \(net\.depth=3\)"):
        net(torch.rand(1, 3, 36, 36))
    with pytest.raises(ValueError, match=r"^image_size=100: .*use image_size=96 or 104"):
        check_divisible(96, 100, 3)
    with pytest.raises(ValueError, match=r"use image_size=32 or 40, or a lower depth$"):  # the model's keys
        check_divisible(36, 36, 3)
    # a band (crop_height rows of an image_size-wide image): the option that sets the side that does not divide
    with pytest.raises(ValueError, match=r"^preprocessing\.crop_height=20: .*use preprocessing\.crop_height=16 or 24"):
        check_divisible(20, 32, 3)
    with pytest.raises(ValueError, match=r"^image_size=36: .*use image_size=32 or 40"):
        check_divisible(16, 36, 3)


def test_unknown_norm_names_the_choices() -> None:
    with pytest.raises(ValueError, match="batch"):
        UNet(norm="layer")
