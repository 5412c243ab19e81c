"""The architecture hypergradient of GenSeg's multi-level optimisation (stage III).

GenSeg's three levels, with generator architecture alpha, generator weights W and segmenter weights S:

    (I)   W*(alpha)      = argmin_W  L_gan(W, alpha; real pairs)
    (II)  S*(W*, alpha)  = argmin_S  (1 - w) L_seg(S; real pairs) + w L_seg(S; G(m~; W*, alpha), m~)
    (III) min_alpha        L_seg(S*(W*(alpha), alpha); validation pairs)

where m~ are augmented masks and G the generator. As in DARTS, each argmin is replaced by one gradient
step from the current weights, and alpha follows the gradient of the resulting *unrolled* validation loss

    f(alpha) = L_val(S'),   S' = S - xi * grad_S L_tr(S, x(alpha)),   x(alpha) = G(m~; W', alpha),
    W' = W - eta * grad_W L_gan(W, alpha)        (only with ``generator_loss``; else W' = W)

By the chain rule, with v = grad_S' L_val(S') and g_x = dL_val/dx the gradient reaching the synthetic images,

    g_x        = -xi * d/dx [ grad_S L_tr(S, x) . v ]                  (a mixed second derivative)
    df/dalpha  = (dx/dalpha)^T g_x                                       (direct: the images depend on alpha)
               - eta * d/dalpha [ grad_W L_gan(W, alpha) . u ],  u = (dx/dW')^T g_x   (through the weights)

Two ways to compute it (``mode``):

* ``"finite_difference"`` (the default; DARTS's approximation): the segmenter's mixed second derivative is a
  central difference of first-order gradients, g_x ~ -xi (grad_x L_tr(S + r v) - grad_x L_tr(S - r v)) / 2r
  with r = eps / |v|. Only first-order gradients of the segmenter are taken, so memory stays that of an
  ordinary training step (the images are produced once with their graph, the segmenter runs four times
  without double backward), it works for any segmenter module unchanged (BatchNorm, MONAI blocks,
  DDP-wrapped training), and its O(r^2) error is far below the error of the one-step unrolling itself
  (measured: 4e-5 relative to the exact value on the test problem). The optional path through the
  generator weights uses an exact Hessian-vector product of the generator's own loss (double backward
  through the generator only): a central difference there would have to step below the distance to the
  nearest ReLU kink of the generator, which float32 cannot resolve (measured: 30-300 % error for steps
  of 1e-2..1e-4 in float64, exact below 1e-5).
* ``"exact"``: the same f(alpha) differentiated exactly with double backward through the virtual steps
  (``torch.func.functional_call`` + ``create_graph``). It costs about twice the memory and needs every op
  of the segmenter to support double backward; it serves as the reference in the tests and for small
  problems.

The public GenSeg 2D code detaches the synthetic image before the segmentation loss, which makes g_x zero
and leaves alpha at its initial value; ``tests/generators/test_hypergradient.py`` checks that the gradient
here is non-zero and matches a finite-difference estimate of f itself.

BatchNorm running statistics touched by the virtual forward passes are restored afterwards, so computing
a hypergradient leaves the segmenter exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call

from segsynth.errors import ConfigError
from segsynth.segment.losses import dice_ce_loss

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HYPERGRADIENT_MODES = ("finite_difference", "exact")


@dataclass
class UnrolledProblem:
    """Everything one hyper-step needs (all tensors on the segmenter's device).

    Attributes:
        segmenter: the segmenter at its current weights S (left unchanged).
        synthesize: ``synthesize(weights)`` returns the synthetic images x (B, C, *S) with their autograd
            graph to alpha; ``weights`` (name -> tensor) overrides the generator weights (None = current).
            It must be deterministic (fixed masks and dropout draws) because it is called several times.
        syn_y: the (augmented) masks the images were generated from, (B, *S) long.
        val_x, val_y: a validation batch.
        xi: step size of the segmenter's virtual SGD step (usually its current learning rate).
        real_x, real_y: a real training batch for the virtual step (optional).
        syn_weight: w, the weight of the synthetic loss in the segmenter's training loss.
        loss_fn: segmentation loss (logits, labels) -> scalar.
        generator_loss: ``generator_loss(weights)`` = L_gan(W, alpha) on a fixed real batch (deterministic),
            to unroll stage I too; None skips the path through the generator weights.
        generator_weights: the generator weights W by name (needed with ``generator_loss``).
        eta: step size of the generator's virtual SGD step.
    """

    segmenter: nn.Module
    synthesize: Callable[[Params | None], torch.Tensor]
    syn_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    xi: float
    real_x: torch.Tensor | None = None
    real_y: torch.Tensor | None = None
    syn_weight: float = 0.5
    loss_fn: LossFn = dice_ce_loss
    generator_loss: Callable[[Params | None], torch.Tensor] | None = None
    generator_weights: dict[str, nn.Parameter] = field(default_factory=dict)
    eta: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.syn_weight <= 1.0:
            raise ConfigError(f"syn_weight must be in (0, 1], got {self.syn_weight}")
        if self.generator_loss is not None and not self.generator_weights:
            raise ConfigError("generator_loss needs generator_weights")


@dataclass
class Hypergradient:
    """The result of one hyper-step: d f / d alpha per architecture parameter, and diagnostics."""

    grads: list[torch.Tensor]
    val_loss: float                     # L_val(S') (the unrolled validation loss f at the current alpha)
    direct: list[torch.Tensor]          # the part through the images' direct dependence on alpha
    through_weights: list[torch.Tensor] | None = None  # the part through W'(alpha), when unrolled

    def norm(self) -> float:
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in self.grads)))


# ---------------------------------------------------------------------------------------------- helpers

def _logits(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out


@contextlib.contextmanager
def preserved_buffers(*modules: nn.Module) -> Iterator[None]:
    """Restore every buffer (e.g. BatchNorm running statistics) of the modules on exit."""
    saved = [{n: b.detach().clone() for n, b in m.named_buffers()} for m in modules]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, s in zip(modules, saved):
                for n, b in m.named_buffers():
                    b.copy_(s[n])


def _trainable(module: nn.Module) -> Params:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _call(module: nn.Module, params: Params | None, x: torch.Tensor) -> torch.Tensor:
    return _logits(module(x) if params is None else functional_call(module, params, (x,)))


def _train_loss(p: UnrolledProblem, params: Params | None, x_syn: torch.Tensor) -> torch.Tensor:
    """(1 - w) L(real) + w L(synthetic) at segmenter weights ``params`` (None = current)."""
    loss = p.syn_weight * p.loss_fn(_call(p.segmenter, params, x_syn), p.syn_y)
    if p.real_x is not None and p.syn_weight < 1.0:
        loss = loss + (1.0 - p.syn_weight) * p.loss_fn(_call(p.segmenter, params, p.real_x), p.real_y)
    return loss


def _sgd(params: Params, grads: Sequence[torch.Tensor], lr: float) -> Params:
    return {n: w - lr * g for (n, w), g in zip(params.items(), grads)}


def _norm(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.detach().double() ** 2).sum() for t in ts))


def _virtual_generator_weights(p: UnrolledProblem, create_graph: bool) -> Params | None:
    """W' = W - eta grad_W L_gan(W, alpha), or None when stage I is not unrolled."""
    if p.generator_loss is None:
        return None
    names = list(p.generator_weights)
    weights = [p.generator_weights[n] for n in names]
    grads = torch.autograd.grad(p.generator_loss(None), weights, create_graph=create_graph, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]
    return {n: w - p.eta * g for n, w, g in zip(names, weights, grads)}


# ---------------------------------------------------------------------------------------------- public

def unrolled_validation_loss(p: UnrolledProblem) -> float:
    """f(alpha): the validation loss after the virtual generator (optional) and segmenter steps.

    This is the function whose gradient ``architecture_hypergradient`` returns; tests differentiate it
    numerically.
    """
    with preserved_buffers(p.segmenter), torch.enable_grad():
        w_virtual = _virtual_generator_weights(p, create_graph=False)
        if w_virtual is not None:
            w_virtual = {n: t.detach() for n, t in w_virtual.items()}
        with torch.no_grad():
            x = p.synthesize(w_virtual)
        s = _trainable(p.segmenter)
        grads = torch.autograd.grad(_train_loss(p, None, x.detach()), list(s.values()), allow_unused=True)
        grads = [torch.zeros_like(w) if g is None else g for w, g in zip(s.values(), grads)]
        s_virtual = {n: t.detach() for n, t in _sgd(s, grads, p.xi).items()}
        with torch.no_grad():
            return float(p.loss_fn(_call(p.segmenter, s_virtual, p.val_x), p.val_y))


def architecture_hypergradient(p: UnrolledProblem, arch_params: Sequence[torch.Tensor],
                               mode: str = "finite_difference", eps: float = 1e-2) -> Hypergradient:
    """d f / d alpha for each tensor of ``arch_params`` (see the module docstring for f and the modes).

    Args:
        p: the unrolled problem.
        arch_params: the architecture parameters alpha (leaves with ``requires_grad``).
        mode: "finite_difference" (default) or "exact".
        eps: relative size r * |v| of the finite-difference perturbations.

    Returns:
        A ``Hypergradient``; the caller writes ``grads`` into ``alpha.grad`` and steps its optimiser.
    """
    if mode not in HYPERGRADIENT_MODES:
        raise ConfigError(f"unknown hypergradient mode {mode!r}; choose from {', '.join(HYPERGRADIENT_MODES)}")
    arch_params = list(arch_params)
    if not arch_params:
        raise ConfigError("no architecture parameters: a derived (discrete) generator cannot be searched")
    with preserved_buffers(p.segmenter), torch.enable_grad():
        if mode == "exact":
            return _exact(p, arch_params)
        return _finite_difference(p, arch_params, eps)


def _exact(p: UnrolledProblem, arch: list[torch.Tensor]) -> Hypergradient:
    w_virtual = _virtual_generator_weights(p, create_graph=True)
    x = p.synthesize(w_virtual)
    s = _trainable(p.segmenter)
    grads = torch.autograd.grad(_train_loss(p, None, x), list(s.values()), create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(s.values(), grads)]
    val = p.loss_fn(_call(p.segmenter, _sgd(s, grads, p.xi), p.val_x), p.val_y)
    g_alpha = torch.autograd.grad(val, arch, allow_unused=True)
    g_alpha = [torch.zeros_like(a) if g is None else g.detach() for a, g in zip(arch, g_alpha)]
    return Hypergradient(grads=g_alpha, val_loss=float(val.detach()), direct=g_alpha, through_weights=None)


def _finite_difference(p: UnrolledProblem, arch: list[torch.Tensor], eps: float) -> Hypergradient:
    # stage I, unrolled: W' as leaves so that u = dL_val/dW' comes out of the same backward pass
    w_virtual = _virtual_generator_weights(p, create_graph=False)
    if w_virtual is not None:
        w_virtual = {n: t.detach().requires_grad_(True) for n, t in w_virtual.items()}
    x = p.synthesize(w_virtual)  # keeps its graph to alpha (and W')
    if not x.requires_grad:  # detached images: no path from the validation loss to alpha
        zeros = [torch.zeros_like(a) for a in arch]
        return Hypergradient(grads=zeros, val_loss=unrolled_validation_loss(p), direct=zeros)

    # stage II, unrolled: S' = S - xi grad_S L_tr(S, x)
    s = _trainable(p.segmenter)
    x_d = x.detach()
    grads = torch.autograd.grad(_train_loss(p, None, x_d), list(s.values()), allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(s.values(), grads)]
    s_virtual = {n: t.detach().requires_grad_(True) for n, t in _sgd(s, grads, p.xi).items()}
    val = p.loss_fn(_call(p.segmenter, s_virtual, p.val_x), p.val_y)
    v = torch.autograd.grad(val, list(s_virtual.values()), allow_unused=True)
    v = [torch.zeros_like(w) if g is None else g for w, g in zip(s_virtual.values(), v)]

    # g_x = -xi d/dx [grad_S L_tr(S, x) . v]  by a central difference along v
    v_norm = float(_norm(v))
    if v_norm == 0.0:
        zeros = [torch.zeros_like(a) for a in arch]
        return Hypergradient(grads=zeros, val_loss=float(val.detach()), direct=zeros)
    r = eps / v_norm
    grad_x = []
    for sign in (1.0, -1.0):
        shifted = {n: w.detach() + sign * r * d for (n, w), d in zip(s.items(), v)}
        x_leaf = x_d.clone().requires_grad_(True)
        loss = p.syn_weight * p.loss_fn(_call(p.segmenter, shifted, x_leaf), p.syn_y)
        grad_x.append(torch.autograd.grad(loss, x_leaf)[0])
    g_x = -p.xi * (grad_x[0] - grad_x[1]) / (2.0 * r)

    # back through the generator: direct part on alpha, u on W'
    w_list = list(w_virtual.values()) if w_virtual is not None else []
    back = torch.autograd.grad(x, arch + w_list, grad_outputs=g_x, allow_unused=True)
    back = [torch.zeros_like(t) if g is None else g for t, g in zip(arch + w_list, back)]
    direct = [g.detach() for g in back[: len(arch)]]
    if w_virtual is None:
        return Hypergradient(grads=direct, val_loss=float(val.detach()), direct=direct)

    # stage I's path: -eta d/dalpha [grad_W L_gan(W, alpha) . u], an exact Hessian-vector product through the
    # generator alone (a central difference here would cross the generator's ReLU kinks for any usable step)
    u = [g.detach() for g in back[len(arch):]]
    through = [torch.zeros_like(a) for a in arch]
    if float(_norm(u)) > 0.0:
        assert p.generator_loss is not None
        weights = list(p.generator_weights.values())
        g_w = torch.autograd.grad(p.generator_loss(None), weights, create_graph=True, allow_unused=True)
        dot = sum((g * d).sum() for g, d in zip(g_w, u) if g is not None)
        if isinstance(dot, torch.Tensor) and dot.requires_grad:
            g_alpha = torch.autograd.grad(dot, arch, allow_unused=True)
            through = [torch.zeros_like(a) if g is None else -p.eta * g.detach() for a, g in zip(arch, g_alpha)]
    total = [d + t for d, t in zip(direct, through)]
    return Hypergradient(grads=total, val_loss=float(val.detach()), direct=direct, through_weights=through)
