import pytest
import torch

from segsynth.errors import ConfigError
from segsynth.nets.segmenters import build_segmenter

SMALL = {"unet": {"features": (8, 8, 16, 16, 32, 8)}, "dynunet": {"levels": 3, "filters": (8, 16, 32)},
         "deeplab": {"aspp_channels": 8}}


@pytest.mark.parametrize("name", ["unet", "dynunet", "deeplab"])
@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 32, 32)), (3, (1, 1, 32, 32, 32))])
def test_output_shape_and_one_step(name, dims, shape):
    torch.manual_seed(0)
    m = build_segmenter(name, dims, shape[1], 3, **SMALL[name])
    x = torch.randn(shape)
    y = m(x)
    assert y.shape == (shape[0], 3, *shape[2:])
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    loss = y.square().mean()
    loss.backward()
    before = [p.detach().clone() for p in m.parameters()]
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert m.segsynth_config["name"] == name
    assert shape[2] % m.size_divisor == 0


def test_rgb_input():
    m = build_segmenter("unet", 2, 3, 2, **SMALL["unet"])
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_unknown_name_and_option():
    with pytest.raises(ConfigError, match="unknown segmenter"):
        build_segmenter("vnet", 2, 1, 2)
    with pytest.raises(ConfigError, match="unknown options"):
        build_segmenter("unet", 2, 1, 2, depth=3)


def test_too_small_input_is_a_clear_error_not_an_instance_norm_traceback():
    """16^3 volumes through a U-Net that down-samples 16x: a ConfigError naming the size and the way out."""
    import pytest

    from segsynth.errors import ConfigError
    from segsynth.nets.segmenters import build_segmenter, check_input_size

    net = build_segmenter("unet", 3, 1, 2, features=(4, 4, 8, 8, 16, 4))
    with pytest.raises(ConfigError, match=r"16x16x16 voxels are too small for the unet.*at least 32"):
        check_input_size(net, (16, 16, 16))
    check_input_size(net, (32, 16, 16))  # deepest level 2x1x1: instance norm works
    net.train()(torch.zeros(2, 1, 32, 16, 16)).sum().backward()
