"""Registration and appearance networks: warps, label sets, losses, one optimisation step, save/load."""

from __future__ import annotations

import pytest
import torch

from segsynth.errors import ConfigError
from segsynth.nets.registration import (
    AppearanceNet,
    RegistrationNet,
    flush_denormals,
    label_boundaries,
    masked_smoothness_loss,
    random_smooth_ddf,
    similarity_loss,
    smoothness_loss,
    warp_image,
    warp_labels,
    warp_probabilities,
)
from segsynth.utils.config import load_state, save_module


def _blob(shape, centre, radius):
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return (d2 < radius**2).float()


@pytest.mark.parametrize("shape", [(16, 20), (8, 10, 12)])
def test_warp_convention_is_voxels_along_each_axis(shape):
    x = torch.zeros(1, 1, *shape)
    x[(0, 0) + tuple(s // 2 for s in shape)] = 1.0
    ddf = torch.zeros(1, len(shape), *shape)
    ddf[:, 0] = 2.0  # output(p) = input(p + 2 e_0)
    out = warp_image(x, ddf)
    peak = torch.nonzero(out[0, 0] > 0.5)[0].tolist()
    assert peak == [shape[0] // 2 - 2] + [s // 2 for s in shape[1:]]


@pytest.mark.parametrize("shape", [(24, 24), (12, 12, 12)])
@pytest.mark.parametrize("mode", ["onehot", "nearest"])
def test_label_warps_stay_in_the_label_set(shape, mode):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, *shape, dtype=torch.long)
    mask[:, 2:8] = 1
    mask[:, 10:14] = 4  # a label set with a gap: {0, 1, 4}
    ddf = random_smooth_ddf(shape, g, max_displacement=3.0, batch=2)
    out = warp_labels(mask, ddf, num_classes=5, mode=mode)
    assert out.dtype == torch.long and out.shape == mask.shape
    assert set(out.unique().tolist()) <= {0, 1, 4}
    assert not torch.equal(out, mask)  # the deformation did something


def test_warp_probabilities_sum_to_one_and_pad_with_background():
    mask = torch.ones(1, 16, 16, dtype=torch.long)
    onehot = torch.nn.functional.one_hot(mask, 2).movedim(-1, 1).float()
    ddf = torch.zeros(1, 2, 16, 16)
    ddf[:, 1] = 20.0  # everything sampled from outside the image
    p = warp_probabilities(onehot, ddf)
    assert torch.allclose(p.sum(1), torch.ones(1, 16, 16), atol=1e-5)
    assert p[:, 0].min() > 0.99


@pytest.mark.parametrize("nd,shape", [(2, (32, 32)), (3, (16, 16, 16))])
def test_a_registration_training_step_reduces_the_loss(nd, shape):
    torch.manual_seed(0)
    # a batch of 2: with batch 1 torch 2.13 trains these small convolutions on its slow path (20x slower)
    moving = _blob(shape, [s / 2 - 2 for s in shape], min(shape) / 4)[None, None].repeat(2, 1, *([1] * nd))
    fixed = _blob(shape, [s / 2 + 2 for s in shape], min(shape) / 4)[None, None].repeat(2, 1, *([1] * nd))
    net = RegistrationNet(nd, 1, channels=(8, 16, 16, 16), integration_steps=4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def loss_fn():
        v = net.velocity(moving, fixed)
        warped = warp_image(moving, net.integrate(v))
        return similarity_loss(warped, fixed, "mse") + 0.01 * smoothness_loss(v)

    first = float(loss_fn().detach())
    with flush_denormals():  # the near-zero start makes denormals, 10x slower on CPU
        for _ in range(15):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
    assert float(loss_fn().detach()) < 0.9 * first


def test_registration_net_starts_near_identity_and_handles_odd_sizes():
    net = RegistrationNet(3, 1, channels=(8, 8, 8, 8))
    x = torch.randn(2, 1, 11, 13, 9)
    warped, ddf = net(x, torch.randn_like(x))
    assert ddf.shape == (2, 3, 11, 13, 9) and warped.shape == x.shape
    assert ddf.abs().max() < 1e-2


def test_negated_velocity_inverts_a_diffeomorphic_transform():
    g = torch.Generator().manual_seed(1)
    net = RegistrationNet(2, 1, channels=(8, 8, 8, 8), integration_steps=7)
    v = random_smooth_ddf((32, 32), g, max_displacement=1.0, control_points=4)
    u, w = net.integrate(v), net.integrate(v, sign=-1.0)
    # composition p -> p + w(p) + u(p + w(p)) is the identity: the residual is tiny next to the displacement
    residual = warp_image(u, w) + w
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert residual[inner].abs().mean() < 0.02 * u[inner].abs().mean()
    with pytest.raises(ConfigError):
        RegistrationNet(2, 1, channels=(8, 8), integration_steps=0).integrate(v, sign=-1.0)


def test_appearance_smoothness_is_not_penalised_across_label_boundaries():
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[:, :, 8:] = 1
    field = mask[:, None].float() * 3.0  # constant inside each label, a jump at the boundary
    weight = 1.0 - label_boundaries(mask, 2)
    assert masked_smoothness_loss(field, None) > 0
    assert masked_smoothness_loss(field, weight) == 0
    inside = field.clone()
    inside[0, 0, 4, 2] = 1.0  # a bump away from the boundary is penalised
    assert masked_smoothness_loss(inside, weight) > 0


@pytest.mark.parametrize("nd", [2, 3])
def test_appearance_net_starts_at_zero_change(nd):
    shape = (18, 14) if nd == 2 else (8, 10, 6)
    net = AppearanceNet(nd, 2, channels=(8, 16))
    a, t = torch.randn(1, 2, *shape), torch.randn(1, 2, *shape)
    out = net(a, t)
    assert out.shape == a.shape and out.abs().max() == 0
    out.sum().backward()  # gradients reach the network
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_registration_net_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = RegistrationNet(2, 1, channels=(8, 8, 8, 8), integration_steps=3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_module(net, tmp_path, net.config, name="reg")
    state, config = load_state(tmp_path, name="reg")
    net2 = RegistrationNet(**config)
    net2.load_state_dict(state)
    x, y = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    assert torch.allclose(net(x, y)[1], net2(x, y)[1])


def test_bad_configurations_raise_config_errors():
    with pytest.raises(ConfigError):
        RegistrationNet(4)
    with pytest.raises(ConfigError):
        RegistrationNet(2, channels=(8, 8, 8))
    with pytest.raises(ConfigError):
        similarity_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), "cosine")
    with pytest.raises(ConfigError):
        warp_labels(torch.zeros(1, 8, 8, dtype=torch.long), torch.zeros(1, 2, 8, 8), 2, mode="linear")
