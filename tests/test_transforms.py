"""The layer contract, checked for every invertible layer in float64.

A round trip alone cannot catch a log-determinant that is wrong the same way in both
directions (a missing H*W, say), so each layer's logdet is also compared with ``slogdet`` of
the autograd Jacobian on a tiny input.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from glowlab.models import Glow
from glowlab.multiscale import Split
from glowlab.nets import MLP, GlowNet, ResNet
from glowlab.priors import ConditionalPrior, LearnedPrior
from glowlab.speed import channels_last_input, compile_flow_steps
from glowlab.transforms import (
    ActNorm,
    BatchNormFlow,
    Coupling,
    Flatten,
    FlowSequential,
    InvConv1x1,
    InvConv1x1LU,
    Logit,
    Reverse,
    Scaling,
    Shuffle,
    Squeeze,
    Transform,
    squeeze2d,
    unsqueeze2d,
)
from glowlab.transforms.base import FusedPair

IMAGE = (2, 4, 4, 4)
VECTOR = (3, 6)


def _perturb(module: nn.Module, std: float = 0.1) -> None:
    """Move every parameter off its initial value, so zero-initialised nets do something."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _glownet(i: int, o: int) -> nn.Module:
    return GlowNet(i, o, hidden_channels=8)


def _resnet(i: int, o: int) -> nn.Module:
    return ResNet(i, o, hidden_channels=8, blocks=1, batch_norm=False)


def _mlp(i: int, o: int) -> nn.Module:
    return MLP(i, o, hidden_features=8, hidden_layers=2)


def _batchnorm_eval(channels: int) -> Transform:
    layer = BatchNormFlow(channels)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    return layer.eval()


def _actnorm_initialized(channels: int, shape: tuple[int, ...]) -> Transform:
    layer = ActNorm(channels)
    layer(torch.randn(16, *shape[1:]) * 3 + 1)  # data-dependent init in training mode
    return layer


def _folded(conv: Callable[[int], Transform], channels: int, shape: tuple[int, ...]) -> Transform:
    return FlowSequential([_actnorm_initialized(channels, shape), conv(channels)])


def _glow_steps(
    conv: Callable[[int], Transform], channels: int, shape: tuple[int, ...], steps: int = 3
) -> FlowSequential:
    """Glow's flow of one level: (ActNorm, 1x1 convolution, coupling) ``steps`` times."""
    net = _glownet if len(shape) == 4 else _mlp
    layers: list[Transform] = []
    for _ in range(steps):
        layers += [_actnorm_initialized(channels, shape), conv(channels), Coupling(channels, net)]
    flow = FlowSequential(layers)
    _perturb(flow)
    return flow


# (id, factory, input shape, input sampler)
CASES: list[tuple[str, Callable[[], Transform], tuple[int, ...]]] = [
    ("actnorm-image", lambda: _actnorm_initialized(4, IMAGE), IMAGE),
    ("actnorm-vector", lambda: _actnorm_initialized(6, VECTOR), VECTOR),
    ("conv1x1-image", lambda: InvConv1x1(4), IMAGE),
    ("conv1x1-vector", lambda: InvConv1x1(6), VECTOR),
    ("conv1x1lu-image", lambda: InvConv1x1LU(4), IMAGE),
    ("conv1x1lu-vector", lambda: InvConv1x1LU(6), VECTOR),
    ("shuffle", lambda: Shuffle(4, seed=3), IMAGE),
    ("reverse", lambda: Reverse(4), IMAGE),
    ("squeeze", lambda: Squeeze(), IMAGE),
    ("flatten", lambda: Flatten(IMAGE[1:]), IMAGE),
    ("batchnorm-eval", lambda: _batchnorm_eval(4), IMAGE),
    ("logit", lambda: Logit(0.05), IMAGE),
    ("scaling", lambda: Scaling(6), VECTOR),
    ("sequential", lambda: FlowSequential([InvConv1x1LU(4), Coupling(4, _glownet)]), IMAGE),
    # An ActNorm followed by a 1x1 convolution runs as one folded convolution.
    ("folded-conv1x1-image", lambda: _folded(InvConv1x1, 4, IMAGE), IMAGE),
    ("folded-conv1x1lu-image", lambda: _folded(InvConv1x1LU, 4, IMAGE), IMAGE),
    ("folded-conv1x1lu-vector", lambda: _folded(InvConv1x1LU, 6, VECTOR), VECTOR),
    ("fused-pair", lambda: _folded(InvConv1x1LU, 4, IMAGE).units()[0], IMAGE),
    # Several folded pairs in one flow: their weights are computed together.
    ("glow-steps-conv1x1-image", lambda: _glow_steps(InvConv1x1, 4, IMAGE), IMAGE),
    ("glow-steps-conv1x1lu-image", lambda: _glow_steps(InvConv1x1LU, 4, IMAGE), IMAGE),
    ("glow-steps-conv1x1lu-vector", lambda: _glow_steps(InvConv1x1LU, 6, VECTOR), VECTOR),
]
for kind in ("additive", "affine"):
    for scale in ("sigmoid", "exp_tanh") if kind == "affine" else ("sigmoid",):
        for parity in (0, 1):
            name = f"{kind}-{scale}-p{parity}"
            CASES += [
                (
                    f"coupling-channel-{name}",
                    partial(Coupling, 4, _glownet, kind, "channel", parity, scale),
                    IMAGE,
                ),
                (
                    f"coupling-checkerboard-{name}",
                    partial(Coupling, 4, _resnet, kind, "checkerboard", parity, scale),
                    IMAGE,
                ),
                (
                    f"coupling-vector-{name}",
                    partial(Coupling, 6, _mlp, kind, "channel", parity, scale),
                    VECTOR,
                ),
            ]


def _input(shape: tuple[int, ...], layer: Transform) -> Tensor:
    if isinstance(layer, Logit):
        return torch.rand(shape) - 0.5
    return torch.randn(shape)


def _jacobian_logdet(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``log|det df/dx|`` of each example, by brute force."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda v, s=xi.shape: f(v.view(s)).flatten(), xi.flatten()
        )
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize(("name", "factory", "shape"), CASES, ids=[c[0] for c in CASES])
def test_transform_contract(
    name: str, factory: Callable[[], Transform], shape: tuple[int, ...]
) -> None:
    layer = factory()
    _perturb(layer)
    layer.eval()
    x = _input(shape, layer)

    z, logdet = layer(x)
    assert z.dtype == x.dtype
    assert z.numel() == x.numel()
    if not isinstance(layer, (Squeeze, Flatten)):
        assert z.shape == x.shape
    assert logdet.shape == (shape[0],) and logdet.dtype == x.dtype and logdet.device == x.device
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()

    x_back, logdet_inv = layer.inverse(z)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(logdet + logdet_inv, torch.zeros_like(logdet), rtol=0, atol=1e-10)

    expected = _jacobian_logdet(lambda v: layer(v)[0], x)
    torch.testing.assert_close(logdet, expected, rtol=1e-8, atol=1e-8)
    # The inverse's logdet is log|det dx/dz| at z.
    expected_inv = _jacobian_logdet(lambda v: layer.inverse(v)[0], z)
    torch.testing.assert_close(logdet_inv, expected_inv, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("prior", ["learned", "standard"])
def test_split_contract(prior: str) -> None:
    split = Split(4, prior=prior)  # type: ignore[arg-type]
    _perturb(split)
    x = torch.randn(IMAGE)
    kept, eps, logdet = split(x)
    assert kept.shape == eps.shape == (2, 2, 4, 4)
    back, logdet_inv = split.inverse(kept, eps)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(logdet + logdet_inv, torch.zeros(2), rtol=0, atol=1e-12)

    def f(v: Tensor) -> Tensor:
        k, e, _ = split(v)
        return torch.cat([k, e], 1)

    torch.testing.assert_close(logdet, _jacobian_logdet(f, x), rtol=1e-8, atol=1e-8)


def test_gaussian_priors_contract() -> None:
    shape = (4, 2, 2)
    y = torch.tensor([0, 2])
    for prior, context in ((LearnedPrior(shape), None), (ConditionalPrior(shape, 3), y)):
        _perturb(prior)
        z = torch.randn(2, *shape)
        eps, logdet = prior(z, context)
        back, logdet_inv = prior.inverse(eps, context)
        torch.testing.assert_close(back, z, rtol=0, atol=1e-12)
        torch.testing.assert_close(logdet + logdet_inv, torch.zeros(2), rtol=0, atol=1e-12)
        for i in range(2):
            ctx = None if context is None else context[i : i + 1]
            expected = _jacobian_logdet(lambda v, p=prior, c=ctx: p(v, c)[0], z[i : i + 1])
            torch.testing.assert_close(logdet[i : i + 1], expected, rtol=1e-8, atol=1e-8)


def test_conditional_prior_needs_labels() -> None:
    with pytest.raises(ValueError, match="class-conditional"):
        ConditionalPrior((4, 2, 2), 3)(torch.randn(1, 4, 2, 2))


# -- ActNorm ---------------------------------------------------------------------------------
def test_actnorm_data_dependent_init() -> None:
    layer = ActNorm(3)
    x = torch.randn(64, 3, 5, 5) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + 4.0
    z, _ = layer(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    assert bool(layer.initialized)
    before = layer.state_dict()
    layer(torch.randn(8, 3, 5, 5))  # a second batch does not re-initialise
    for key, value in before.items():
        torch.testing.assert_close(layer.state_dict()[key], value)


def test_actnorm_init_is_accurate_in_float32_far_from_zero() -> None:
    layer = ActNorm(2).float()
    x = (torch.randn(256, 2, 4, 4) * 0.1 + 100.0).float()
    z, _ = layer(x)
    torch.testing.assert_close(
        z.double().std((0, 2, 3), unbiased=False), torch.ones(2), atol=1e-3, rtol=0
    )


def test_actnorm_does_not_initialise_in_eval_mode() -> None:
    layer = ActNorm(2).eval()
    x = torch.randn(4, 2, 3, 3)
    z, _ = layer(x)
    torch.testing.assert_close(z, x)
    assert not bool(layer.initialized)


def test_actnorm_reloaded_never_reinitialises() -> None:
    trained = ActNorm(2)
    trained(torch.randn(16, 2, 3, 3) * 5)
    fresh = ActNorm(2)
    fresh.load_state_dict(trained.state_dict())
    fresh.train()
    x = torch.randn(16, 2, 3, 3) + 100.0
    torch.testing.assert_close(fresh(x)[0], trained(x)[0])
    # And the other way: loading an uninitialised state re-enables the init.
    trained.load_state_dict(ActNorm(2).state_dict())
    assert trained.needs_init()


def test_actnorm_reset_initialization_initializes_on_the_next_batch() -> None:
    layer = ActNorm(2)
    layer(torch.randn(16, 2, 3, 3) * 5)
    layer.reset_initialization()
    assert not bool(layer.initialized)
    z, _ = layer(torch.randn(16, 2, 3, 3) + 100.0)
    assert bool(layer.initialized) and z.mean().abs() < 1e-6  # set from the new batch


# -- 1x1 convolutions ------------------------------------------------------------------------
def test_lu_and_plain_conv_agree() -> None:
    plain = InvConv1x1(5)
    lu = InvConv1x1LU(5, init_weight=plain.weight.detach())
    torch.testing.assert_close(lu.weight(), plain.weight, atol=1e-12, rtol=0)
    x = torch.randn(2, 5, 3, 3)
    (z1, ld1), (z2, ld2) = plain(x), lu(x)
    torch.testing.assert_close(z1, z2, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld1, ld2, atol=1e-12, rtol=0)


def test_conv1x1_starts_volume_preserving() -> None:
    for layer in (InvConv1x1(6), InvConv1x1LU(6)):
        _, logdet = layer(torch.randn(2, 6, 4, 4))
        torch.testing.assert_close(logdet, torch.zeros(2), atol=1e-10, rtol=0)


def test_inverse_weight_cache_follows_updates() -> None:
    layer = InvConv1x1LU(4).eval()
    with torch.no_grad():
        first = layer.inverse_weight().clone()
        assert layer.inverse_weight() is layer.inverse_weight()  # cached
        layer.log_s.add_(0.5)  # an optimizer step bumps the version counter
        second = layer.inverse_weight()
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second @ layer.weight().detach(), torch.eye(4), atol=1e-12, rtol=0)


@pytest.mark.parametrize("factory", [InvConv1x1, InvConv1x1LU])
def test_inverse_weight_cache_is_never_stale_across_modes(
    factory: Callable[[int], Transform],
) -> None:
    layer = factory(4).eval()
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        layer.inverse(layer(x)[0])  # fills the cache
        layer.train()
        for p in layer.parameters():
            p.data.mul_(1.1)  # a write that bumps no version counter
        layer.eval()
        torch.testing.assert_close(layer.inverse(layer(x)[0])[0], x, rtol=0, atol=1e-10)
        for p in layer.parameters():
            p.data.mul_(1.1)
        layer.clear_inverse_cache()
        torch.testing.assert_close(layer.inverse(layer(x)[0])[0], x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_cache_filled_under_inference_mode_does_not_reach_autograd(compiled: bool) -> None:
    """An evaluation under ``torch.inference_mode`` fills the caches; a later frozen-model
    pass with a gradient for the input (restoration, latent search) computes its own."""
    model = Glow((1, 4, 4), levels=1, steps=2, hidden_channels=4)
    with torch.no_grad():
        model.log_prob(torch.rand(8, 1, 4, 4) - 0.5)  # ActNorm's init
    model.eval().requires_grad_(False)
    if compiled:
        compile_flow_steps(model, backend="eager")
    x = torch.rand(2, 1, 4, 4) - 0.5
    with torch.inference_mode():
        expected = model.log_prob(x)
    x.requires_grad_(True)
    log_prob = model.log_prob(x)
    log_prob.sum().backward()
    torch.testing.assert_close(log_prob.detach(), expected, rtol=0, atol=1e-12)
    assert x.grad is not None and x.grad.abs().sum() > 0


# -- ActNorm folded into the 1x1 convolution --------------------------------------------------
def _pair(conv: Callable[[int], Transform], shape: tuple[int, ...]) -> FlowSequential:
    flow = _folded(conv, shape[1], shape)
    _perturb(flow)
    return flow  # type: ignore[return-value]


@pytest.mark.parametrize("conv", [InvConv1x1, InvConv1x1LU])
@pytest.mark.parametrize("shape", [IMAGE, VECTOR], ids=["image", "vector"])
def test_folded_actnorm_is_the_same_function_and_gradient(
    conv: Callable[[int], Transform], shape: tuple[int, ...]
) -> None:
    fused = _pair(conv, shape)
    separate = copy.deepcopy(fused)
    separate.fuse = False
    x = torch.randn(shape)
    # The fused pair is really taken (not the layer-by-layer fallback).
    assert fused.transforms[1].forward_fused(fused.transforms[0], x) is not None
    outputs = []
    for flow in (fused, separate):
        z, logdet = flow(x)
        x_back, logdet_inv = flow.inverse(z)
        (z.square().sum() + logdet.sum() + x_back.sum() + logdet_inv.sum()).backward()
        outputs.append((z, logdet, x_back, logdet_inv))
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for (name, a), (_, b) in zip(
        fused.named_parameters(), separate.named_parameters(), strict=True
    ):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-11, msg=name)


def _no_batched_folds(flow: FlowSequential) -> FlowSequential:
    """``flow`` with each folded pair computing its own weights (the per-pair path)."""
    flow.batch_folds = False
    return flow


@pytest.mark.parametrize("conv", [InvConv1x1, InvConv1x1LU])
@pytest.mark.parametrize("shape", [IMAGE, VECTOR], ids=["image", "vector"])
def test_batched_folds_are_the_same_function_and_gradient(
    conv: Callable[[int], Transform], shape: tuple[int, ...]
) -> None:
    batched = _glow_steps(conv, shape[1], shape)
    pairs = [u for u in batched.units() if isinstance(u, FusedPair)]
    x = torch.randn(shape)
    assert pairs[0].second.fold_pairs(pairs, x) is not None  # really taken
    per_pair = _no_batched_folds(copy.deepcopy(batched))
    separate = copy.deepcopy(batched)
    separate.fuse = False
    outputs = []
    for flow in (batched, per_pair, separate):
        z, logdet = flow(x)
        (z.square().sum() + logdet.sum()).backward()
        outputs.append((z, logdet))
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for flow in (per_pair, separate):
        for (name, a), (_, b) in zip(
            batched.named_parameters(), flow.named_parameters(), strict=True
        ):
            assert a.grad is not None, name
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize("conv", [InvConv1x1, InvConv1x1LU])
def test_batched_unfolds_invert_each_pair(conv: Callable[[int], Transform]) -> None:
    flow = _glow_steps(conv, 4, IMAGE)
    pairs = [u for u in flow.units() if isinstance(u, FusedPair)]
    x = torch.randn(IMAGE)
    folded = pairs[0].second.fold_pairs(pairs, x)
    inverses = pairs[0].second.unfold_pairs(pairs)
    assert folded is not None and inverses is not None
    for pair, forward, inverse in zip(pairs, folded.apply, inverses, strict=True):
        z = forward(x)
        expected, _ = pair.inverse(z)  # the pair's own folded inverse
        torch.testing.assert_close(inverse(z), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(inverse(z), x, rtol=0, atol=1e-10)
    assert not inverses[0](x).requires_grad  # computed without gradients


def test_batched_folds_leave_evaluation_to_the_cache() -> None:
    flow = _glow_steps(InvConv1x1LU, 4, IMAGE).eval()
    pairs = [u for u in flow.units() if isinstance(u, FusedPair)]
    x = torch.randn(IMAGE)
    with torch.no_grad():
        assert pairs[0].second.fold_pairs(pairs, x) is None
    assert pairs[0].second.fold_pairs(pairs, x) is not None  # gradients for the weights
    # An ActNorm that will initialise itself on this batch: no folding yet.
    fresh = FlowSequential([ActNorm(4), InvConv1x1LU(4), ActNorm(4), InvConv1x1LU(4)])
    units = fresh.units()
    assert units[0].second.fold_pairs(units, x) is None
    fresh(x)
    assert units[0].second.fold_pairs(units, x) is not None
    mixed = FlowSequential([*flow.transforms[:2], *fresh.transforms[:1], InvConv1x1(4)])
    units = mixed.units()
    assert units[0].second.fold_pairs(units, x) is None  # two kinds of convolution


def test_units_pair_each_actnorm_with_its_convolution() -> None:
    layers = [ActNorm(4), InvConv1x1LU(4), Coupling(4, _glownet), ActNorm(4), InvConv1x1(4)]
    flow = FlowSequential(layers)
    keys = list(flow.state_dict())
    units = flow.units()
    assert [type(u).__name__ for u in units] == ["FusedPair", "Coupling", "FusedPair"]
    assert units[0].first is layers[0] and units[0].second is layers[1]
    assert flow.units()[0] is units[0]  # built once, not on every pass
    assert list(flow.state_dict()) == keys and len(list(flow.modules())) == len(
        list(FlowSequential(layers).modules())
    )
    flow.transforms.append(Reverse(4))
    assert type(flow.units()[-1]) is Reverse
    assert FlowSequential(layers, fuse=False).units() == layers
    assert FlowSequential([Reverse(4), InvConv1x1(4)]).units()[0].__class__ is Reverse


def test_folding_waits_for_actnorm_init() -> None:
    flow = FlowSequential([ActNorm(4), InvConv1x1LU(4)])
    x = torch.randn(IMAGE) * 3 + 2
    assert flow.transforms[1].forward_fused(flow.transforms[0], x) is None  # not initialised
    flow(x)  # the first call runs the layers one by one, and ActNorm initialises
    assert bool(flow.transforms[0].initialized)
    assert flow.transforms[1].forward_fused(flow.transforms[0], x) is not None
    assert flow.transforms[1].forward_fused(Reverse(4), x) is None  # only an ActNorm folds


def test_folded_weights_are_cached_in_eval_until_the_weights_change() -> None:
    flow = _pair(InvConv1x1LU, IMAGE).eval()
    actnorm, conv = flow.transforms
    x = torch.randn(IMAGE)
    with torch.no_grad():
        first, _ = flow(x)
        cached = conv._cache.entries["_fold_forward", False][1][0]
        flow(x)
        assert conv._cache.entries["_fold_forward", False][1][0] is cached  # reused, not recomputed
        actnorm.log_scale.add_(0.25)  # an update bumps the version counter
        second, _ = flow(x)
        flow.fuse = False
        expected, _ = flow(x)
        torch.testing.assert_close(second, expected, rtol=0, atol=1e-12)
        assert not torch.allclose(first, second)
        flow.fuse = True
        torch.testing.assert_close(flow.inverse(second)[0], x, rtol=0, atol=1e-10)


# -- squeeze -------------------------------------------------------------------------------
def test_squeeze_golden_order() -> None:
    x = torch.arange(2 * 4 * 4, dtype=torch.float64).view(1, 2, 4, 4)
    z = squeeze2d(x)
    assert z.shape == (1, 8, 2, 2)
    # Channel c*4 + 2*i + j holds input channel c at offset (i, j) in each 2x2 block.
    assert z[0, :, 0, 0].tolist() == [0, 1, 4, 5, 16, 17, 20, 21]
    assert z[0, 3].tolist() == [[5, 7], [13, 15]]
    assert torch.equal(unsqueeze2d(z), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_squeeze_keeps_channels_last(channels: int) -> None:
    x = torch.randn(2, channels, 8, 4, dtype=torch.float64)
    nhwc = channels_last_input(x)
    z = squeeze2d(nhwc)
    assert torch.equal(z, squeeze2d(x)) and z.is_contiguous(memory_format=torch.channels_last)
    assert not squeeze2d(x).is_contiguous(memory_format=torch.channels_last)
    back = unsqueeze2d(z)
    assert torch.equal(back, x) and back.stride() == nhwc.stride()
    # A channel half of a channels-last tensor (what a split hands on) stays channels-last.
    half = squeeze2d(z[:, : 2 * channels])
    assert torch.equal(half, squeeze2d(squeeze2d(x)[:, : 2 * channels]))
    assert half.is_contiguous(memory_format=torch.channels_last)


def test_squeeze_rejects_odd_sizes() -> None:
    with pytest.raises(ValueError, match="divisible by 2"):
        Squeeze()(torch.randn(1, 1, 5, 4))


# -- couplings -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["additive", "affine"])
def test_zero_init_coupling_is_identity_or_constant_scale(kind: str) -> None:
    x = torch.randn(2, 4, 4, 4)
    layer = Coupling(4, _glownet, kind)  # type: ignore[arg-type]
    z, logdet = layer(x)
    if kind == "additive":
        torch.testing.assert_close(z, x)
        return
    # Glow's sigmoid(h + 2) at h = 0: the changed half is scaled by sigmoid(2).
    torch.testing.assert_close(z[:, :2], x[:, :2])
    torch.testing.assert_close(z[:, 2:], x[:, 2:] * torch.sigmoid(torch.tensor(2.0)))
    torch.testing.assert_close(
        logdet, torch.full((2,), 32 * float(torch.nn.functional.logsigmoid(torch.tensor(2.0))))
    )


def test_exp_tanh_coupling_starts_as_identity() -> None:
    x = torch.randn(2, 4, 4, 4)
    z, logdet = Coupling(4, _glownet, "affine", scale="exp_tanh")(x)
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(logdet, torch.zeros(2))


def test_checkerboard_keeps_conditioning_cells() -> None:
    layer = Coupling(3, _resnet, "affine", "checkerboard", parity=1)
    _perturb(layer, 0.5)
    x = torch.randn(2, 3, 4, 4)
    z, _ = layer(x)
    kept = (torch.arange(4).view(-1, 1) + torch.arange(4).view(1, -1)) % 2 == 1
    assert torch.equal(z[..., kept], x[..., kept])
    assert not torch.allclose(z[..., ~kept], x[..., ~kept])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 3}, "even number of channels"),
        ({"kind": "multiplicative"}, "unknown coupling kind"),
        ({"mask": "stripes"}, "unknown coupling mask"),
        ({"scale": "softplus"}, "unknown coupling scale"),
        ({"parity": 2}, "parity must be 0 or 1"),
    ],
)
def test_coupling_rejects_bad_options(kwargs: dict, match: str) -> None:
    args = {"channels": 4, "net_factory": _glownet, **kwargs}
    with pytest.raises(ValueError, match=match):
        Coupling(**args)


def test_logit_rejects_bad_alpha() -> None:
    with pytest.raises(ValueError, match=r"0 < alpha < 0\.5"):
        Logit(0.5)


def test_layers_reject_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 4"):
        ActNorm(4)(torch.randn(2, 3, 4, 4))


def test_batchnorm_flow_uses_batch_statistics_in_training() -> None:
    layer = BatchNormFlow(3)
    x = torch.randn(32, 3, 4, 4) * 3 + 2
    z, logdet = layer(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-10, rtol=0)
    var = x.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(logdet, (-0.5 * 16 * torch.log(var + layer.eps).sum()).expand(32))
    assert not torch.allclose(layer.running_mean, torch.zeros(3))


# -- property-based round trips over shapes ----------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    half_channels=st.integers(1, 3),
    height=st.integers(1, 3).map(lambda n: 2 * n),
    width=st.integers(1, 3).map(lambda n: 2 * n),
    mask=st.sampled_from(["channel", "checkerboard"]),
    kind=st.sampled_from(["additive", "affine"]),
)
def test_round_trip_fuzz(
    batch: int, half_channels: int, height: int, width: int, mask: str, kind: str
) -> None:
    torch.set_default_dtype(torch.float64)
    c = 2 * half_channels
    flow = FlowSequential(
        [
            ActNorm(c),
            InvConv1x1LU(c),
            Coupling(c, _glownet, kind, mask),  # type: ignore[arg-type]
            Squeeze(),
            Shuffle(4 * c),
            Coupling(4 * c, _glownet, kind, "channel", 1),  # type: ignore[arg-type]
        ]
    )
    _perturb(flow)
    x = torch.randn(batch, c, height, width)
    z, logdet = flow(x)
    assert z.shape == (batch, 4 * c, height // 2, width // 2)
    back, logdet_inv = flow.inverse(z)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(logdet + logdet_inv, torch.zeros(batch), rtol=0, atol=1e-9)
