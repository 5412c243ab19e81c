"""Pix2Pix with searchable cells (GenSeg's mask-to-image generator) and a PatchGAN discriminator, 2D and 3D.

The generator is the Pix2Pix U-Net (Isola et al. 2017): ``num_downs`` stride-2 down-sampling cells, the
mirrored up-sampling cells with skip connections, instance normalisation, LeakyReLU(0.2) on the way down,
ReLU on the way up, dropout on the innermost up cells, ``tanh`` output. As in GenSeg, every down- and
up-sampling block is a *searchable cell*: a mixture ``sum_i softmax(alpha)_i * op_i(x)`` over candidate
operations that differ in kernel size, stride and padding but give the same output shape:

* down (halve the size): ``conv3`` (k3, p1), ``conv4`` (k4, p1), ``conv5`` (k5, p2), all stride 2;
* up (double the size): ``deconv4`` (transposed k4, s2, p1), ``deconv2`` (transposed k2, s2),
  ``up_conv3`` / ``up_conv5`` (nearest up-sampling then a k3 / k5 convolution).

The architecture weights ``alpha`` (one row per cell) are parameters of the module but are kept apart
from the network weights: ``arch_parameters()`` and ``weight_parameters()`` give the two groups, so each gets
its own optimiser. ``derive()`` returns the discrete network (the strongest operation per cell, weights
copied); its ``genotype`` is part of ``config()`` (the JSON init args saved beside the weights), so a
derived network reloads as what it is.

Randomness: dropout is the generator's only noise source (as in Pix2Pix, where it is kept on at test time
for diverse outputs). It is active only when ``forward`` gets a ``torch.Generator``, which draws the masks;
without one the network is deterministic. Nothing here touches the global random state after
construction: ``reset_parameters(seed)`` initialises weights from a seed (N(0, 0.02), as Pix2Pix).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator

from segsynth.errors import ConfigError

DOWN_OPS: tuple[str, ...] = ("conv3", "conv4", "conv5")
UP_OPS: tuple[str, ...] = ("deconv4", "deconv2", "up_conv3", "up_conv5")
_DOWN_KERNELS = {"conv3": (3, 1), "conv4": (4, 1), "conv5": (5, 2)}


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _conv_t(spatial_dims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def _norm(spatial_dims: int, channels: int) -> nn.Module:
    cls = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
    return cls(channels, affine=True)


def make_down_op(name: str, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """One candidate down-sampling operation (halves each spatial size of an even-sized input)."""
    if name not in _DOWN_KERNELS:
        raise ConfigError(f"unknown down-sampling op {name!r}; choose from {', '.join(DOWN_OPS)}")
    k, p = _DOWN_KERNELS[name]
    return _conv(spatial_dims)(in_channels, out_channels, kernel_size=k, stride=2, padding=p)


def make_up_op(name: str, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """One candidate up-sampling operation (doubles each spatial size)."""
    if name == "deconv4":
        return _conv_t(spatial_dims)(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
    if name == "deconv2":
        return _conv_t(spatial_dims)(in_channels, out_channels, kernel_size=2, stride=2, padding=0)
    if name in ("up_conv3", "up_conv5"):
        k = 3 if name == "up_conv3" else 5
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                             _conv(spatial_dims)(in_channels, out_channels, kernel_size=k, padding=k // 2))
    raise ConfigError(f"unknown up-sampling op {name!r}; choose from {', '.join(UP_OPS)}")


# ------------------------------------------------------------------------------ fused mixtures
# Every candidate op of a cell is linear in its input and shares one stride and one output grid, so the
# mixture sum_i w_i op_i(x) equals ONE convolution whose kernel is sum_i w_i K_i (each K_i zero-padded to a
# common window) and whose bias is sum_i w_i b_i. Down cells become one k5 stride-2 convolution instead of
# k3 + k4 + k5; up cells one k6 stride-2 transposed convolution instead of deconv4 + deconv2 + (nearest
# up-sampling + k3) + (nearest up-sampling + k5), whose two up-sampled convolutions alone cost 136 taps per
# input voxel in 2D against 36. Same function (up to float rounding), same parameters, same gradients.


def _linear_spec(op: nn.Module) -> tuple[str, int, torch.Tensor, torch.Tensor | None, int] | None:
    """(kind, stride, kernel, bias, left) of a fusable op; kernel index m is the offset m - left; else None.

    kind "conv": kernel (Cout, Cin, *k), out[o] = sum_m K[m] x[s*o + m - left];
    kind "convT": kernel (Cin, Cout, *k), out[s*i + m - left] += K[m] x[i].
    """
    def uniform(v: Any) -> int | None:
        v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        return int(v[0]) if len(set(v)) == 1 else None

    if isinstance(op, nn.modules.conv._ConvNd) and op.groups == 1 and uniform(op.dilation) == 1 \
            and not isinstance(op.padding, str) and op.padding_mode == "zeros":
        s, p = uniform(op.stride), uniform(op.padding)
        if s is None or p is None:
            return None
        if op.transposed:
            if any(int(v) for v in op.output_padding):
                return None
            return "convT", s, op.weight, op.bias, p
        return "conv", s, op.weight, op.bias, p
    if isinstance(op, nn.Sequential) and len(op) == 2 and isinstance(op[0], nn.Upsample) \
            and op[0].mode == "nearest" and op[0].size is None and uniform(op[0].scale_factor) == 2:
        inner = _linear_spec(op[1])
        if inner is None or inner[0] != "conv" or inner[1] != 1:
            return None
        _, _, w, b, p = inner
        # nearest x2 then conv(k, p): input i reaches outputs 2i + t + p - j (t in {0, 1}, tap j); as a stride-2
        # transposed kernel of size k + 1 that is the flipped kernel summed over the 2^d shifts t
        nd = w.ndim - 2
        wf = torch.flip(w, dims=list(range(2, w.ndim))).transpose(0, 1)
        eff = None
        for shift in range(2**nd):  # F.pad lists the last dimension first: (before, after) per dimension
            ts = [(shift >> d) & 1 for d in range(nd)]
            placed = F.pad(wf, [v for t in reversed(ts) for v in (t, 1 - t)])
            eff = placed if eff is None else eff + placed
        return "convT", 2, eff, b, int(w.shape[2]) - 1 - p
    return None


def _fused_taps(ops: Sequence[nn.Module]) -> int:
    """Taps of the fused kernel (K^d), or 0 when the ops cannot be fused into one convolution."""
    specs = [_linear_spec(op) for op in ops]
    if len(ops) < 2 or any(sp is None for sp in specs):
        return 0
    if len({sp[0] for sp in specs}) != 1 or len({sp[1] for sp in specs}) != 1:  # type: ignore[index]
        return 0
    if not all(len(set(sp[2].shape[2:])) == 1 for sp in specs):  # type: ignore[index]
        return 0
    lefts = [int(sp[4]) for sp in specs]  # type: ignore[index]
    rights = [int(sp[2].shape[2]) - 1 - lft for sp, lft in zip(specs, lefts)]  # type: ignore[index]
    return (max(lefts) + max(rights) + 1) ** (specs[0][2].ndim - 2)  # type: ignore[index]


# Building the mixed kernel costs about as much as a convolution over ~10 input voxels per kernel tap; below
# that many (batch x spatial) input voxels the separate ops are cheaper (measured on CPU, 2D: deep 4x4 cells
# were 2-3x slower fused, 32x32 cells 2-5x faster). Per spatial dims: in 3D the up-sampled candidates cost 8x
# their input's voxels (2D: 4x), and fusing every cell of the 40x56x40 hippocampus generator (batch 4, deep cells
# at 1-9 voxels per tap) took a GAN step from 408 to 325-330 ms on 2 CPU cores; 0 and 4 were as fast as 1.
FUSE_MIN_VOXELS_PER_TAP: dict[int, float] = {2: 12, 3: 1}

# A stride-2 transposed convolution with few output channels (the generator's image cell: 1 or 3) leaves
# oneDNN's channel vectors mostly empty; the same sums as ONE convolution over the input with 2^d x C_out output
# channels (one per output phase, ``conv_transpose_by_phases``) fill them and skip the cropped border. Measured on
# 2 CPU cores, forward + backward: 3D 16 -> 1 channels at 24x32x24, batch 4: 77 -> 20 ms; with 8 or more output
# channels it was as fast or slower (3D 64 -> 32: 5.6 -> 11.5 ms). In 2D the cell alone gained (32 -> 1 at 64²,
# batch 8: 14.4 -> 6.6 ms) but the whole generator did not (64² RGB, batch 4, forward + backward: 147 against
# 149 ms), so 2D keeps the transposed convolution and its runs their float rounding. Per spatial dims;
# CPU only (on a GPU the transposed convolution stays: not measured there).
PHASE_MAX_OUT_CHANNELS: dict[int, int] = {2: 0, 3: 4}


def fused_mixture(ops: Sequence[nn.Module], weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * ops[i](x) as one (transposed) convolution; ops must pass ``_fusable``."""
    specs = [_linear_spec(op) for op in ops]
    kind, stride = specs[0][0], specs[0][1]  # type: ignore[index]
    nd = x.ndim - 2
    sizes = [int(sp[2].shape[2]) for sp in specs]  # type: ignore[index]
    lefts = [int(sp[4]) for sp in specs]  # type: ignore[index]
    left = max(lefts)
    right = max(k - 1 - lft for k, lft in zip(sizes, lefts))
    kernel = None
    bias = None
    for w, sp, k, lft in zip(weights, specs, sizes, lefts):
        _, _, kern, b, _ = sp  # type: ignore[misc]
        placed = w * F.pad(kern, [left - lft, right - (k - 1 - lft)] * nd)
        kernel = placed if kernel is None else kernel + placed
        if b is not None:
            bias = w * b if bias is None else bias + w * b
    k0, l0 = sizes[0], lefts[0]
    if kind == "conv":
        n_out = [(n + 2 * l0 - k0) // stride + 1 for n in x.shape[2:]]
        pad_right = max(right, left)
        conv = F.conv2d if nd == 2 else F.conv3d
        if pad_right == left:
            out = conv(x, kernel, bias, stride=stride, padding=left)
        else:
            out = conv(F.pad(x, [left, pad_right] * nd), kernel, bias, stride=stride)
        return out[(slice(None), slice(None)) + tuple(slice(0, n) for n in n_out)]
    n_out = [(n - 1) * stride - 2 * l0 + k0 for n in x.shape[2:]]
    if x.device.type == "cpu" and stride == 2 and kernel.shape[1] <= PHASE_MAX_OUT_CHANNELS[nd] \
            and n_out == [2 * n for n in x.shape[2:]]:  # measured on CPU only
        return conv_transpose_by_phases(x, kernel, bias, left)
    conv_t = F.conv_transpose2d if nd == 2 else F.conv_transpose3d
    out = conv_t(x, kernel, bias, stride=stride)
    return out[(slice(None), slice(None)) + tuple(slice(left, left + n) for n in n_out)]


def conv_transpose_by_phases(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None,
                             left: int) -> torch.Tensor:
    """The stride-2 transposed convolution ``out[2i + m - left] += kernel[m] x[i]`` (kernel (C_in, C_out, K^d),
    the same K on every axis) on the output grid ``0 .. 2n - 1``, as one ordinary convolution plus a shuffle.

    Output voxel ``2q + r`` (phase ``r`` in {0, 1} per axis) sums ``kernel[r + left - 2s] x[q + s]`` over the
    offsets ``s`` that keep the tap inside the kernel: for each phase that is a stride-1 convolution of ``x`` with
    the taps ``r + left, r + left - 2, ...`` of the kernel. The 2^d phase kernels become the output channels of one
    convolution (phase-major), whose output is interleaved back onto the doubled grid. Same sums as
    ``conv_transpose`` + crop (float rounding aside); differentiable in ``x``, ``kernel`` and ``bias``.
    """
    nd = x.ndim - 2
    cin, cout, k = int(kernel.shape[0]), int(kernel.shape[1]), int(kernel.shape[2])
    # offsets s in [lo, hi]: taps m = r + left - 2s with 0 <= m < k for r = 0 or 1
    lo = min(-((k - 1 - r - left) // 2) for r in (0, 1))
    hi = max((r + left) // 2 for r in (0, 1))
    taps = hi - lo + 1
    # with the kernel flipped (index k - 1 - m) the taps of phase r run upwards in steps of 2 from
    # k - 1 - r - left + 2 lo; zero padding covers the offsets whose tap falls outside the kernel
    first = [k - 1 - r - left + 2 * lo for r in (0, 1)]
    pad_lo = max(0, -min(first))
    pad_hi = max(0, max(f + 2 * (taps - 1) for f in first) - (k - 1))
    flipped = F.pad(torch.flip(kernel, dims=list(range(2, 2 + nd))), [pad_lo, pad_hi] * nd)
    phases = []
    for rs in itertools.product((0, 1), repeat=nd):  # axis 0's phase varies slowest
        index = tuple(slice(first[r] + pad_lo, first[r] + pad_lo + 2 * taps - 1, 2) for r in rs)
        phases.append(flipped[(slice(None), slice(None)) + index])
    weight = torch.stack(phases).transpose(1, 2).reshape(2**nd * cout, cin, *(taps,) * nd)
    conv = F.conv2d if nd == 2 else F.conv3d
    xp = F.pad(x, [-lo, hi] * nd)  # negative padding crops
    y = conv(xp, weight, None if bias is None else bias.repeat(2**nd))
    b, sizes = x.shape[0], [int(v) for v in x.shape[2:]]
    y = y.reshape(b, *(2,) * nd, cout, *sizes)  # (B, r_0 .. r_{d-1}, C, n_0 .. n_{d-1})
    order = [0, nd + 1] + [v for a in range(nd) for v in (nd + 2 + a, 1 + a)]  # (B, C, n_0, r_0, n_1, r_1, ..)
    return y.permute(order).reshape(b, cout, *(2 * n for n in sizes))


class SearchableCell(nn.Module):
    """A weighted mixture of candidate operations with one output shape; with one op it is just that op."""

    def __init__(self, ops: dict[str, nn.Module]):
        super().__init__()
        if not ops:
            raise ConfigError("a searchable cell needs at least one candidate operation")
        self.ops = nn.ModuleDict(ops)
        # one convolution with the mixed kernel instead of one per candidate (see ``fused_mixture``);
        # False evaluates every candidate op separately (the reference the tests compare with)
        self._fused_taps = _fused_taps(list(self.ops.values()))
        self.fuse = self._fused_taps > 0

    @property
    def op_names(self) -> list[str]:
        return list(self.ops.keys())

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        ops = list(self.ops.values())
        if weights is None:
            if len(ops) != 1:
                raise RuntimeError("a cell with several candidate ops needs mixture weights")
            return ops[0](x)
        if self.fuse and self._fused_taps \
                and x[:, 0].numel() >= FUSE_MIN_VOXELS_PER_TAP[x.ndim - 2] * self._fused_taps:
            return fused_mixture(ops, weights, x)
        out = weights[0] * ops[0](x)
        for w, op in zip(weights[1:], ops[1:]):
            out = out + w * op(x)
        return out


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout whose mask comes from ``generator`` (no generator: identity)."""
    if generator is None or p <= 0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=generator.device) >= p
    return x * keep.to(device=x.device, dtype=x.dtype) / (1.0 - p)


def auto_num_downs(spatial_shape: Sequence[int], max_downs: int = 8, min_bottleneck: int = 2) -> int:
    """Most down-sampling levels that keep the bottleneck at least ``min_bottleneck`` voxels per axis."""
    smallest = min(int(s) for s in spatial_shape)
    n = int(math.floor(math.log2(max(1, smallest) / min_bottleneck)))
    return max(1, min(max_downs, n))


class Pix2PixGenerator(nn.Module):
    """U-Net generator with searchable down/up cells; maps a one-hot mask (B, K, *S) to an image in [-1, 1].

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (the number of classes of the one-hot mask).
        out_channels: image channels (1 grey, 3 RGB, or more).
        features: channels after the first down cell; doubled per level up to ``max_features``.
        max_features: channel cap (Pix2Pix: 8 x features).
        num_downs: down-sampling cells; inputs are padded to a multiple of ``2**num_downs``.
        down_ops, up_ops: candidate operations of the searchable cells (see the module docstring).
        genotype: ``{"down": [op per cell], "up": [op per cell]}`` for a derived (discrete) network;
            None = searchable (every cell mixes all candidates with weights ``softmax(alpha)``).
        dropout: dropout probability on the ``n_dropout`` innermost up cells below the bottleneck.
        n_dropout: how many up cells get dropout (Pix2Pix: 3).
        seed: weight initialisation seed.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, out_channels: int = 1, features: int = 32,
                 max_features: int = 256, num_downs: int = 5, down_ops: Sequence[str] = DOWN_OPS,
                 up_ops: Sequence[str] = UP_OPS, genotype: dict[str, list[str]] | None = None,
                 dropout: float = 0.5, n_dropout: int = 3, seed: int = 0):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if num_downs < 1:
            raise ConfigError(f"num_downs must be >= 1, got {num_downs}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.max_features = max_features
        self.num_downs = num_downs
        self.down_ops = tuple(down_ops)
        self.up_ops = tuple(up_ops)
        self.dropout = float(dropout)
        self.n_dropout = int(n_dropout)
        self.seed = int(seed)
        if genotype is not None:
            genotype = {"down": list(genotype["down"]), "up": list(genotype["up"])}
            if len(genotype["down"]) != num_downs or len(genotype["up"]) != num_downs:
                raise ConfigError(f"genotype needs {num_downs} down and {num_downs} up ops, got {genotype}")
            for op in genotype["down"]:
                if op not in self.down_ops:
                    raise ConfigError(f"genotype op {op!r} is not a down candidate {self.down_ops}")
            for op in genotype["up"]:
                if op not in self.up_ops:
                    raise ConfigError(f"genotype op {op!r} is not an up candidate {self.up_ops}")
        self.genotype = genotype
        rng_state = torch.get_rng_state()  # torch's default init draws from the global RNG: restore it after
        try:
            self._build_layers(spatial_dims, in_channels, out_channels, features, max_features, num_downs, genotype)
        finally:
            torch.set_rng_state(rng_state)
        self.size_divisor = 2**num_downs
        self.reset_parameters(self.seed)

    def _build_layers(self, spatial_dims: int, in_channels: int, out_channels: int, features: int,
                      max_features: int, num_downs: int, genotype: dict[str, list[str]] | None) -> None:
        ch = [min(features * 2**i, max_features) for i in range(num_downs)]
        self.channels = ch
        self.down = nn.ModuleList()
        self.down_norm = nn.ModuleList()
        for i in range(num_downs):
            cin = in_channels if i == 0 else ch[i - 1]
            names = self.down_ops if genotype is None else (genotype["down"][i],)
            self.down.append(SearchableCell({n: make_down_op(n, spatial_dims, cin, ch[i]) for n in names}))
            # no norm on the outermost (input) and innermost (bottleneck) down cells, as Pix2Pix
            self.down_norm.append(_norm(spatial_dims, ch[i]) if 0 < i < num_downs - 1 else nn.Identity())
        self.up = nn.ModuleList()
        self.up_norm = nn.ModuleList()
        for j in range(num_downs):  # up[j] mirrors down[j]; it runs from j = num_downs - 1 to 0
            cin = ch[j] if j == num_downs - 1 else 2 * ch[j]
            cout = out_channels if j == 0 else ch[j - 1]
            names = self.up_ops if genotype is None else (genotype["up"][j],)
            self.up.append(SearchableCell({n: make_up_op(n, spatial_dims, cin, cout) for n in names}))
            self.up_norm.append(_norm(spatial_dims, cout) if j > 0 else nn.Identity())
        # dropout on the n_dropout up cells right below the innermost one (never the output cell)
        self.dropout_cells = {j for j in range(max(1, num_downs - 1 - self.n_dropout), num_downs - 1)}
        if genotype is None:
            self.alpha_down = nn.Parameter(torch.zeros(num_downs, len(self.down_ops)))
            self.alpha_up = nn.Parameter(torch.zeros(num_downs, len(self.up_ops)))
        else:
            self.alpha_down = None
            self.alpha_up = None

    # ------------------------------------------------------------------------------------------ params

    @property
    def searchable(self) -> bool:
        return self.genotype is None

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture weights alpha (empty for a derived network)."""
        return [] if not self.searchable else [self.alpha_down, self.alpha_up]

    def named_weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        arch = {id(p) for p in self.arch_parameters()}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in arch]

    def weight_parameters(self) -> list[nn.Parameter]:
        """The network weights (everything but alpha)."""
        return [p for _, p in self.named_weight_parameters()]

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Pix2Pix initialisation from a seed: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
        g = torch.Generator().manual_seed(int(seed))
        for m in self.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.affine:
                m.weight.copy_(1.0 + torch.randn(m.weight.shape, generator=g) * 0.02)
                m.bias.zero_()
        for a in self.arch_parameters():
            a.zero_()  # uniform mixture at the start of the search

    def set_fused(self, fused: bool) -> None:
        """Evaluate mixture cells as one convolution with the mixed kernel (True, the default where the cell's
        ops allow it; same function up to float rounding) or op by op (False)."""
        for m in self.modules():
            if isinstance(m, SearchableCell):
                m.fuse = bool(fused) and m._fused_taps > 0

    def mixture_weights(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """softmax(alpha) per cell for down and up cells, or None for a derived network."""
        if not self.searchable:
            return None
        return F.softmax(self.alpha_down, dim=-1), F.softmax(self.alpha_up, dim=-1)

    # ------------------------------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image in [-1, 1] of the input's spatial shape. ``generator`` turns dropout on and draws its masks."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a (B, C, *S) tensor with {self.spatial_dims} spatial dims, got {tuple(x.shape)}")
        shape = x.shape[2:]
        pads: list[int] = []
        for s in reversed(shape):
            pads += [0, (-s) % self.size_divisor]
        if any(pads):
            x = F.pad(x, pads, mode="replicate")
        mix = self.mixture_weights()
        h = x
        skips = []
        for i, (cell, norm) in enumerate(zip(self.down, self.down_norm)):
            if i > 0:
                h = F.leaky_relu(h, 0.2)
            h = norm(cell(h, None if mix is None else mix[0][i]))
            skips.append(h)
        for j in range(self.num_downs - 1, -1, -1):
            if j < self.num_downs - 1:
                h = torch.cat([h, skips[j]], dim=1)
            h = self.up[j](F.relu(h), None if mix is None else mix[1][j])
            if j > 0:
                h = self.up_norm[j](h)
                if j in self.dropout_cells:
                    h = _dropout(h, self.dropout, generator)
            else:
                h = torch.tanh(h)
        sl = (slice(None), slice(None)) + tuple(slice(0, s) for s in shape)
        return h[sl]

    # ------------------------------------------------------------------------------------------ derive

    def current_genotype(self) -> dict[str, list[str]]:
        """The strongest operation per cell (argmax alpha), or the fixed genotype of a derived network."""
        if not self.searchable:
            assert self.genotype is not None
            return {"down": list(self.genotype["down"]), "up": list(self.genotype["up"])}
        down = [self.down_ops[int(i)] for i in self.alpha_down.detach().argmax(-1)]
        up = [self.up_ops[int(i)] for i in self.alpha_up.detach().argmax(-1)]
        return {"down": down, "up": up}

    def derive(self) -> Pix2PixGenerator:
        """The discrete network: one operation per cell (argmax alpha), with the trained weights copied.

        The derived network computes ``op_k(x)`` where the mixture computed ``sum_i w_i op_i(x)``; the
        mixture weight of the chosen op is *not* folded in (it is the network a retraining or a
        fine-tuning starts from, as in DARTS), so its output differs from the mixture's.
        """
        cfg = self.config()
        cfg["genotype"] = self.current_genotype()
        new = Pix2PixGenerator(**cfg).to(next(self.parameters()).device)
        own = self.state_dict()
        new.load_state_dict({k: own[k] for k in new.state_dict()}, strict=True)
        return new

    def config(self) -> dict[str, Any]:
        """JSON-serialisable init args (rebuilds this network, derived or searchable)."""
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "features": self.features, "max_features": self.max_features,
                "num_downs": self.num_downs, "down_ops": list(self.down_ops), "up_ops": list(self.up_ops),
                "genotype": None if self.genotype is None else {k: list(v) for k, v in self.genotype.items()},
                "dropout": self.dropout, "n_dropout": self.n_dropout, "seed": self.seed}

    def arch_summary(self) -> dict[str, Any]:
        """The genotype and, for a searchable network, softmax(alpha) per cell (for logs and configs)."""
        out: dict[str, Any] = {"genotype": self.current_genotype()}
        mix = self.mixture_weights()
        if mix is not None:
            out["weights_down"] = [[round(float(v), 4) for v in row] for row in mix[0].detach().cpu()]
            out["weights_up"] = [[round(float(v), 4) for v in row] for row in mix[1].detach().cpu()]
        return out


class PatchGANDiscriminator(nn.Module):
    """Conditional PatchGAN: scores (mask one-hot, image) patches; MONAI's ``PatchDiscriminator`` inside.

    Args:
        spatial_dims: 2 or 3.
        in_channels: mask channels + image channels.
        features: channels of the first layer (doubled per layer).
        num_layers: strided layers (Pix2Pix's 70x70 PatchGAN: 3). Lower it for small inputs.
        seed: weight initialisation seed.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, features: int = 64, num_layers: int = 3,
                 seed: int = 0):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.features = features
        self.num_layers = num_layers
        self.seed = int(seed)
        with torch.random.fork_rng(devices=[]):  # MONAI initialises from the global RNG; keep it untouched
            self.net = PatchDiscriminator(spatial_dims=spatial_dims, channels=features, in_channels=in_channels,
                                          out_channels=1, num_layers_d=num_layers, norm="INSTANCE", bias=True)
        self.reset_parameters(self.seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        g = torch.Generator().manual_seed(int(seed))
        for m in self.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits (B, 1, *S') for a (B, in_channels, *S) input."""
        return self.net(x)[-1]

    def config(self) -> dict[str, Any]:
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels, "features": self.features,
                "num_layers": self.num_layers, "seed": self.seed}


def auto_disc_layers(spatial_shape: Sequence[int], requested: int = 3) -> int:
    """PatchGAN layers that keep at least 2 voxels per axis before the last (stride-1) layers."""
    smallest = min(int(s) for s in spatial_shape)
    fit = int(math.floor(math.log2(max(2, smallest)))) - 2
    return max(1, min(requested, fit))
