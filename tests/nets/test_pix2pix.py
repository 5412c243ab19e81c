import pytest
import torch
import torch.nn.functional as F

from segsynth.errors import ConfigError
from segsynth.nets.pix2pix import (
    DOWN_OPS,
    UP_OPS,
    PatchGANDiscriminator,
    Pix2PixGenerator,
    SearchableCell,
    auto_disc_layers,
    auto_num_downs,
    conv_transpose_by_phases,
    make_down_op,
    make_up_op,
)
from segsynth.utils.config import load_state, save_module

SMALL = {"features": 4, "max_features": 16}


def _onehot(shape, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (2, *shape), generator=g)
    return F.one_hot(y, k).movedim(-1, 1).float()


@pytest.mark.parametrize("nd,shape", [(2, (32, 32)), (2, (30, 20)), (3, (16, 16, 16)), (3, (12, 16, 10))])
@pytest.mark.parametrize("out_channels", [1, 3])
def test_output_shapes_grey_rgb_2d_3d(nd, shape, out_channels):
    net = Pix2PixGenerator(nd, 3, out_channels, num_downs=auto_num_downs(shape), **SMALL)
    x = _onehot(shape)
    y = net(x, torch.Generator().manual_seed(0))
    assert y.shape == (2, out_channels, *shape)
    assert y.abs().max() <= 1.0  # tanh output
    d = PatchGANDiscriminator(nd, 3 + out_channels, features=4, num_layers=auto_disc_layers(shape))
    assert d(torch.cat([x, y], 1)).shape[:2] == (2, 1)


def test_candidate_ops_keep_shapes():
    x = torch.randn(1, 4, 16, 12)
    for name in DOWN_OPS:
        assert make_down_op(name, 2, 4, 6)(x).shape == (1, 6, 8, 6)
    for name in UP_OPS:
        assert make_up_op(name, 2, 4, 6)(x).shape == (1, 6, 32, 24)
    with pytest.raises(ConfigError):
        make_down_op("conv7", 2, 4, 4)
    cell = SearchableCell({n: make_down_op(n, 2, 4, 6) for n in DOWN_OPS})
    w = torch.tensor([0.0, 1.0, 0.0])
    assert torch.allclose(cell(x, w), cell.ops["conv4"](x))


def test_arch_and_weight_parameters_are_apart():
    net = Pix2PixGenerator(2, 2, 1, num_downs=3, **SMALL)
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert [tuple(a.shape) for a in arch] == [(3, len(DOWN_OPS)), (3, len(UP_OPS))]
    ids = {id(p) for p in arch}
    assert not ids & {id(p) for p in weights}
    assert len(arch) + len(weights) == len(list(net.parameters()))
    assert all(float(a.detach().abs().sum()) == 0.0 for a in arch)  # uniform mixture at the start


def test_determinism_under_seed_and_dropout_generator():
    a = Pix2PixGenerator(2, 3, 1, num_downs=4, seed=1, **SMALL)
    b = Pix2PixGenerator(2, 3, 1, num_downs=4, seed=1, **SMALL)
    c = Pix2PixGenerator(2, 3, 1, num_downs=4, seed=2, **SMALL)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))
    x = _onehot((32, 32))
    assert torch.equal(a(x), a(x))  # no generator: dropout off, deterministic
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(a(x, g1), b(x, g2))
    assert not torch.equal(a(x, torch.Generator().manual_seed(6)), a(x, torch.Generator().manual_seed(7)))
    state = torch.get_rng_state()
    Pix2PixGenerator(2, 3, 1, num_downs=2, **SMALL)
    PatchGANDiscriminator(2, 4, features=4, num_layers=2)
    a(x, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())  # construction and forward leave the global RNG alone


def test_derive_save_load_round_trip(tmp_path):
    net = Pix2PixGenerator(2, 3, 1, num_downs=3, **SMALL)
    with torch.no_grad():
        net.alpha_down.copy_(torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [3.0, 0.0, 0.0]]))
        net.alpha_up[:, 3] = 1.0
    derived = net.derive()
    geno = {"down": ["conv4", "conv5", "conv3"], "up": ["up_conv5"] * 3}
    assert derived.genotype == geno and derived.config()["genotype"] == geno
    assert derived.arch_parameters() == [] and not derived.searchable
    assert torch.equal(derived.down[0].ops["conv4"].weight, net.down[0].ops["conv4"].weight)
    assert sum(p.numel() for p in derived.parameters()) < sum(p.numel() for p in net.weight_parameters())
    x = _onehot((24, 24))
    save_module(derived, tmp_path / "g", derived.config(), name="generator")
    state, cfg = load_state(tmp_path / "g", name="generator")
    again = Pix2PixGenerator(**cfg)
    again.load_state_dict(state)
    assert again.genotype == geno
    assert torch.equal(again(x), derived(x))
    # a searchable network round-trips too (alpha is part of its state)
    save_module(net, tmp_path / "s", net.config(), name="generator")
    state, cfg = load_state(tmp_path / "s", name="generator")
    s2 = Pix2PixGenerator(**cfg)
    s2.load_state_dict(state)
    assert torch.equal(s2(x), net(x)) and s2.current_genotype() == geno
    with pytest.raises(ConfigError):
        Pix2PixGenerator(2, 3, 1, num_downs=3, genotype={"down": ["conv4"], "up": ["deconv2"]}, **SMALL)
    with pytest.raises(ConfigError):
        Pix2PixGenerator(2, 3, 1, num_downs=1, genotype={"down": ["conv9"], "up": ["deconv2"]}, **SMALL)


def test_one_step_reduces_loss_and_alpha_has_its_own_optimiser():
    torch.manual_seed(0)
    net = Pix2PixGenerator(2, 3, 1, num_downs=3, dropout=0.0, **SMALL)
    x = _onehot((16, 16))
    target = torch.tanh(x[:, 1:2] - x[:, 2:3])
    opt_w = torch.optim.Adam(net.weight_parameters(), lr=1e-2)
    opt_a = torch.optim.Adam(net.arch_parameters(), lr=1e-1)
    alpha0 = [a.detach().clone() for a in net.arch_parameters()]
    losses = []
    for _ in range(5):
        loss = (net(x) - target).abs().mean()
        opt_w.zero_grad()
        opt_a.zero_grad()
        loss.backward()
        assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.arch_parameters())
        opt_w.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(alpha0, net.arch_parameters()))  # weights step leaves alpha
    opt_a.step()
    assert any(not torch.equal(a, b) for a, b in zip(alpha0, net.arch_parameters()))


def test_auto_sizes():
    assert auto_num_downs((128, 128)) == 6 and auto_num_downs((16, 16, 16)) == 3 and auto_num_downs((4, 4)) == 1
    assert auto_disc_layers((64, 64)) == 3 and auto_disc_layers((16, 16)) == 2 and auto_disc_layers((8, 8, 8)) == 1


@pytest.mark.parametrize("nd,shape", [(2, (8, 6)), (2, (7, 5)), (3, (4, 4, 2))])
@pytest.mark.parametrize("kind", ["down", "up"])
@pytest.mark.parametrize("phases", [True, False])  # up cells: by output phases, or conv_transpose + crop
def test_fused_mixture_equals_the_sum_of_candidate_ops(monkeypatch, nd, shape, kind, phases):
    """The fused cell (one convolution with the mixed kernel) computes the mixture and its gradients exactly."""
    import segsynth.nets.pix2pix as p2p

    monkeypatch.setattr(p2p, "FUSE_MIN_VOXELS_PER_TAP", {2: 0, 3: 0})  # fuse even these tiny inputs
    monkeypatch.setattr(p2p, "PHASE_MAX_OUT_CHANNELS", {2: 4, 3: 4} if phases else {2: 0, 3: 0})
    if kind == "down" and any(s % 2 for s in shape):
        return  # down cells take even sizes (the generator pads to a multiple of 2**num_downs)
    torch.manual_seed(0)
    names, make = (DOWN_OPS, make_down_op) if kind == "down" else (UP_OPS, make_up_op)
    cell = SearchableCell({n: make(n, nd, 3, 4) for n in names}).double()  # 4 outputs: phases reach it
    assert cell.fuse
    for op in cell.modules():
        if isinstance(op, torch.nn.modules.conv._ConvNd):
            torch.nn.init.normal_(op.bias)
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(len(names), dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for fuse in (True, False):
        cell.fuse = fuse
        y = cell(x, torch.softmax(alpha, 0))
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum()
        grads.append(torch.autograd.grad(loss, [x, alpha, *cell.parameters()]))
        outs.append(y.detach())
    assert outs[0].shape == outs[1].shape
    assert torch.allclose(outs[0], outs[1], atol=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("k,left", [(6, 2), (4, 1), (2, 0), (5, 2), (3, 1), (6, 3), (4, 0)])
def test_conv_transpose_by_phases_is_the_cropped_transposed_convolution(nd, k, left):
    """One convolution over 2^d phases + a shuffle = conv_transpose(stride 2) cropped to [left, left + 2n); gradients
    too (kernel sizes and offsets of every candidate op, and of their fused windows)."""
    g = torch.Generator().manual_seed(k * 10 + left)
    x = torch.randn(2, 3, *(5, 4, 3)[:nd], dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 2, *(k,) * nd, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=g, requires_grad=True)
    full = (F.conv_transpose2d if nd == 2 else F.conv_transpose3d)(x, w, b, stride=2)
    n = [2 * s for s in x.shape[2:]]
    assert all(left + v <= int(full.shape[2 + a]) for a, v in enumerate(n))  # the window lies inside the output
    ref = full[(slice(None), slice(None)) + tuple(slice(left, left + v) for v in n)]
    out = conv_transpose_by_phases(x, w, b, left)
    assert out.shape == ref.shape == (2, 2, *n)
    assert torch.allclose(out, ref, atol=1e-12)
    weight = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    for a, c in zip(torch.autograd.grad((ref * weight).sum(), [x, w, b]),
                    torch.autograd.grad((out * weight).sum(), [x, w, b])):
        assert torch.allclose(a, c, atol=1e-12)


def test_fused_generator_matches_unfused_generator():
    """The whole searchable generator: fused and separate cells agree (float32 rounding only)."""
    net = Pix2PixGenerator(2, 3, 1, num_downs=3, **SMALL)
    with torch.no_grad():
        net.alpha_down.normal_()
        net.alpha_up.normal_()
    x = _onehot((64, 64))
    fused = net(x, torch.Generator().manual_seed(0))
    for m in net.modules():
        if isinstance(m, SearchableCell):
            m.fuse = False
    plain = net(x, torch.Generator().manual_seed(0))
    assert torch.allclose(fused, plain, atol=1e-5)


@pytest.mark.parametrize("nd,shape", [(2, (32, 32)), (3, (16, 16, 16))])
def test_image_cell_runs_by_phases_in_3d_only(monkeypatch, nd, shape):
    """The defaults: the 3D generator's fused image cell (1 output channel) runs as one convolution over its output
    phases (measured faster there), the 2D one as conv_transpose + crop (no gain measured in the whole 2D net);
    both give the op-by-op mixture."""
    import segsynth.nets.pix2pix as p2p

    calls = []
    real = p2p.conv_transpose_by_phases
    monkeypatch.setattr(p2p, "conv_transpose_by_phases", lambda *a: calls.append(a[1].shape) or real(*a))
    net = Pix2PixGenerator(nd, 3, 1, num_downs=2, **SMALL)
    with torch.no_grad():
        net.alpha_up.normal_()
    x = _onehot(shape)
    fused = net(x)
    assert [tuple(s[1:2]) for s in calls] == ([(1,)] if nd == 3 else [])
    net.set_fused(False)
    assert torch.allclose(fused, net(x), atol=1e-5)


def test_phase_image_cell_runs_under_bf16_autocast():
    """The 3D generator (image cell by phases) under CPU bf16 autocast: bf16 out, close to fp32, alpha gets a
    gradient."""
    net = Pix2PixGenerator(3, 3, 1, num_downs=2, **SMALL)
    x = _onehot((16, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.bfloat16
    y.float().mean().backward()
    assert net.alpha_up.grad is not None and torch.isfinite(net.alpha_up.grad).all()
    with torch.no_grad():
        assert float((y.float() - net(x)).abs().max()) < 0.05
