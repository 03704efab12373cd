"""Whole models: exact likelihood by brute force, inversion, gradients, save/load, sampling."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import glowlab
from glowlab import NICE, FlowModel, Glow, RealNVP, bits_per_dim, build_model, dequantize
from glowlab.priors import StandardLogistic


def _perturb(model: nn.Module, std: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))


GLOW_SHAPE = (2, 4, 4)
CONFIGS: list[tuple[str, Callable[[], FlowModel]]] = []
for coupling in ("affine", "additive"):
    for permutation in ("conv1x1_lu", "conv1x1", "shuffle", "reverse"):
        CONFIGS.append(
            (
                f"glow-{coupling}-{permutation}",
                lambda c=coupling, p=permutation: Glow(
                    GLOW_SHAPE, levels=2, steps=2, hidden_channels=4, coupling=c, permutation=p
                ),
            )
        )
CONFIGS += [
    (
        "glow-no-learn-top",
        lambda: Glow(GLOW_SHAPE, levels=2, steps=1, hidden_channels=4, learn_top=False),
    ),
    (
        "glow-standard-split",
        lambda: Glow(GLOW_SHAPE, levels=2, steps=1, hidden_channels=4, split_prior="standard"),
    ),
    (
        "glow-exp-tanh",
        lambda: Glow(GLOW_SHAPE, levels=1, steps=2, hidden_channels=4, scale="exp_tanh"),
    ),
    (
        "glow-conditional",
        lambda: Glow(GLOW_SHAPE, levels=2, steps=1, hidden_channels=4, num_classes=3),
    ),
    (
        "glow-conditional-no-learn-top",
        lambda: Glow(
            GLOW_SHAPE, levels=2, steps=1, hidden_channels=4, num_classes=3, learn_top=False
        ),
    ),
    ("realnvp", lambda: RealNVP((1, 4, 4), levels=2, hidden_channels=4, res_blocks=1)),
    (
        "realnvp-no-bn",
        lambda: RealNVP((2, 4, 4), levels=2, hidden_channels=4, res_blocks=1, batch_norm=False),
    ),
    ("nice-logistic", lambda: NICE((1, 2, 4), couplings=4, hidden_features=8, hidden_layers=2)),
    (
        "nice-gaussian",
        lambda: NICE((1, 2, 4), hidden_features=8, hidden_layers=2, prior="gaussian"),
    ),
]
IDS = [name for name, _ in CONFIGS]


def _labels(model: FlowModel, n: int) -> Tensor | None:
    return torch.arange(n) % model.num_classes if model.num_classes else None


def _ready(
    factory: Callable[[], FlowModel], batch: int = 3
) -> tuple[FlowModel, Tensor, Tensor | None]:
    """A model past its data-dependent init, with perturbed weights, in eval mode."""
    model = factory()
    x = torch.rand(batch, *model.image_shape) - 0.5
    y = _labels(model, batch)
    model.train()
    with torch.no_grad():
        model.evaluate(torch.rand(16, *model.image_shape) - 0.5, _labels(model, 16))
    _perturb(model)
    model.eval()
    return model, x, y


@pytest.mark.parametrize("factory", [f for _, f in CONFIGS], ids=IDS)
def test_log_prob_equals_brute_force_change_of_variables(factory: Callable[[], FlowModel]) -> None:
    model, x, y = _ready(factory)
    log_prob = model.log_prob(x, y)
    assert log_prob.shape == (x.shape[0],)
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        yi = None if y is None else y[i : i + 1]

        def eps_of(v: Tensor, yi: Tensor | None = yi, shape: torch.Size = xi.shape) -> Tensor:
            return torch.cat([e.flatten() for e in model.encode(v.view(shape), yi)])

        eps = eps_of(xi.flatten())
        jac = torch.autograd.functional.jacobian(eps_of, xi.flatten())
        logdet = torch.linalg.slogdet(jac).logabsdet
        if isinstance(model.base, StandardLogistic):
            prior = -(nn.functional.softplus(eps) + nn.functional.softplus(-eps)).sum()
        else:
            prior = -0.5 * (eps**2).sum() - 0.5 * eps.numel() * math.log(2 * math.pi)
        torch.testing.assert_close(log_prob[i], prior + logdet, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("factory", [f for _, f in CONFIGS], ids=IDS)
def test_decode_inverts_encode(factory: Callable[[], FlowModel]) -> None:
    model, x, y = _ready(factory)
    latents = model.encode(x, y)
    assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes
    assert sum(z[0].numel() for z in latents) == model.dims
    torch.testing.assert_close(model.decode(latents, y), x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("factory", [f for _, f in CONFIGS], ids=IDS)
def test_every_parameter_receives_a_gradient(factory: Callable[[], FlowModel]) -> None:
    model, x, y = _ready(factory, batch=4)
    model.train()
    out = model.evaluate(x, y)
    loss = -out.log_prob.mean()
    if model.classifier is not None:
        assert y is not None
        loss = loss + 0.01 * model.class_loss(out, y).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("factory", [f for _, f in CONFIGS], ids=IDS)
def test_state_dict_round_trip(factory: Callable[[], FlowModel]) -> None:
    model, x, y = _ready(factory)
    clone = build_model(model.name, model.config)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    torch.testing.assert_close(clone.log_prob(x, y), model.log_prob(x, y), rtol=0, atol=0)
    # A reloaded model in training mode does not redo ActNorm's data-dependent init.
    clone.train()
    model.train()
    if not any(isinstance(m, glowlab.transforms.BatchNormFlow) for m in model.modules()):
        torch.testing.assert_close(clone.log_prob(0.9 * x, y), model.log_prob(0.9 * x, y))


@pytest.mark.parametrize("factory", [f for _, f in CONFIGS], ids=IDS)
def test_sample_shapes_and_temperature_zero(factory: Callable[[], FlowModel]) -> None:
    model, _, _ = _ready(factory)
    y = _labels(model, 5)
    samples = model.sample(5, temperature=0.7, y=y)
    assert samples.shape == (5, *model.image_shape)
    assert torch.isfinite(samples).all()
    # Temperature 0: every standardized latent is 0, the path of prior means.
    zero = model.sample(5, temperature=0.0, y=y)
    means = model.decode([torch.zeros(5, *s) for s in model.latent_shapes], y)
    torch.testing.assert_close(zero, means, rtol=0, atol=0)


def test_train_and_eval_agree_after_init() -> None:
    model = Glow(GLOW_SHAPE, levels=2, steps=2, hidden_channels=4)
    x = torch.rand(8, *GLOW_SHAPE) - 0.5
    init_lp = model.train().log_prob(x)  # ActNorm initialises: the layers run one by one
    train_lp = model.log_prob(x)  # ActNorm folded into the 1x1 convolutions from here on
    torch.testing.assert_close(train_lp, init_lp, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.eval().log_prob(x), train_lp, rtol=0, atol=0)


def test_actnorm_init_normalises_the_first_batch() -> None:
    model = Glow(GLOW_SHAPE, levels=1, steps=1, hidden_channels=4)
    actnorm = model.levels[0].flow.transforms[1]
    seen: list[Tensor] = []
    actnorm.register_forward_hook(lambda m, i, o: seen.append(o[0]))
    model.train().log_prob(torch.rand(32, *GLOW_SHAPE) * 0.3 + 0.1)
    torch.testing.assert_close(seen[0].mean((0, 2, 3)), torch.zeros(8), atol=1e-10, rtol=0)


def test_conditional_log_prob_marginalises_classes() -> None:
    model, x, _ = _ready(
        lambda: Glow(GLOW_SHAPE, levels=2, steps=1, hidden_channels=4, num_classes=3)
    )
    per_class = torch.stack([model.log_prob(x, torch.full((3,), k)) for k in range(3)], 1)
    expected = torch.logsumexp(per_class, 1) - math.log(3)
    torch.testing.assert_close(model.log_prob(x), expected)
    logits = model.evaluate(x, torch.zeros(3, dtype=torch.long)).class_logits
    assert logits is not None and logits.shape == (3, 3)


def test_glow_cifar_latent_shapes() -> None:
    model = Glow((3, 32, 32), levels=3, steps=1, hidden_channels=8)
    assert model.latent_shapes == [(6, 16, 16), (12, 8, 8), (48, 4, 4)]


# -- bits per dimension -----------------------------------------------------------------------
class _UniformCube(nn.Module):
    """The uniform density on [-1/2, 1/2)^D: log p = 0, so every image costs n_bits bits/dim."""

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return x.new_zeros(x.shape[0])


@pytest.mark.parametrize("n_bits", [8, 5, 1])
def test_bits_per_dim_of_uniform_density_is_n_bits(n_bits: int) -> None:
    images = torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8)
    torch.testing.assert_close(
        bits_per_dim(_UniformCube(), images, n_bits), torch.full((4,), float(n_bits))
    )


def test_bits_per_dim_of_identity_flow_is_analytic() -> None:
    # A NICE at initialisation is the identity (zero-initialised couplings, zero log-scales),
    # so with a Gaussian prior log p(x) = sum log N(x; 0, 1) in closed form.
    model = NICE((1, 2, 2), hidden_features=4, hidden_layers=1, prior="gaussian")
    images = torch.randint(0, 256, (5, 1, 2, 2), dtype=torch.uint8)
    bpd = bits_per_dim(model, images, generator=torch.Generator().manual_seed(7))
    x = dequantize(images, generator=torch.Generator().manual_seed(7))
    log_p = (-0.5 * x**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    expected = -(log_p - 4 * math.log(256)) / (4 * math.log(2))
    torch.testing.assert_close(bpd, expected)


def test_dequantize_range_and_bins() -> None:
    images = torch.tensor([[[[0, 7, 8, 255]]]], dtype=torch.uint8)
    x = dequantize(images, n_bits=5, noise=False)
    torch.testing.assert_close(x, (torch.tensor([[[[0, 0, 1, 31]]]]) + 0.5) / 32 - 0.5)
    noisy = dequantize(torch.randint(0, 256, (100, 1, 4, 4), dtype=torch.uint8))
    assert noisy.min() >= -0.5 and noisy.max() < 0.5
    assert torch.equal(
        glowlab.quantize(dequantize(images, 5, noise=True), 5),
        torch.tensor([[[[0, 0, 8, 248]]]], dtype=torch.uint8),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_stays_in_its_bin_when_the_noise_rounds_up(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """u just below 1: in float32, k + u rounds to k + 1 (the next bin's edge, or 0.5)."""
    below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: below_one.expand(shape).clone())
    images = torch.tensor([[[[0, 1, 100, 254, 255]]]], dtype=torch.uint8)
    x = dequantize(images, dtype=dtype)
    k = images.to(dtype)
    assert (x >= k / 256 - 0.5).all() and (x < (k + 1) / 256 - 0.5).all() and x.max() < 0.5
    if dtype == torch.float32:  # quantize adds 0.5 in float64, exactly for a float32 x
        assert torch.equal(glowlab.quantize(x), images)


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: Glow((3, 28, 28), levels=3), "divisible by 8"),
        (lambda: Glow((3, 8, 8), coupling="quadratic"), "unknown coupling"),
        (lambda: Glow((3, 8, 8), levels=1, permutation="random"), "unknown permutation"),
        (lambda: Glow((3, 8, 8), levels=0), "levels must be a positive integer"),
        (lambda: Glow((3, 8), levels=1), "image_shape must be three positive integers"),
        (lambda: Glow((3, 8, 8), levels=1, num_classes=1), "num_classes"),
        (lambda: Glow((3, 8, 8), levels=1, split_prior="mixture"), "unknown split prior"),
        (lambda: RealNVP((3, 6, 6), levels=3), "divisible by 4"),
        (lambda: NICE((1, 3, 3)), "even C\\*H\\*W"),
        (lambda: NICE((1, 2, 2), prior="laplace"), "unknown prior"),
    ],
)
def test_constructors_reject_impossible_configurations(
    factory: Callable[[], FlowModel], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_log_prob_rejects_wrong_input() -> None:
    model = Glow((1, 4, 4), levels=1, steps=1, hidden_channels=4)
    with pytest.raises(ValueError, match=r"shape \(B, 1, 4, 4\), got \(2, 1, 8, 8\)"):
        model.log_prob(torch.rand(2, 1, 8, 8))
    with pytest.raises(TypeError, match=r"float images in \[-0\.5, 0\.5\), got dtype torch\.uint8"):
        model.log_prob(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="without num_classes"):
        model.log_prob(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="decode expects 1 latent"):
        model.decode([torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)])
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)


def test_conditional_model_needs_labels_to_encode() -> None:
    model = Glow((1, 4, 4), levels=1, steps=1, hidden_channels=4, num_classes=2)
    with pytest.raises(ValueError, match="class-conditional"):
        model.encode(torch.rand(2, 1, 4, 4) - 0.5)
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 1\]"):
        model.encode(torch.rand(2, 1, 4, 4) - 0.5, torch.tensor([0, 5]))


@pytest.mark.parametrize("factory", [f for _, f in CONFIGS], ids=IDS)
def test_models_move_between_dtypes(factory: Callable[[], FlowModel]) -> None:
    model, x, y = _ready(factory)
    expected = model.log_prob(x, y)
    model = model.float()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    log_prob = model.log_prob(x.float(), y)
    assert log_prob.dtype == torch.float32
    torch.testing.assert_close(log_prob.double(), expected, rtol=1e-4, atol=1e-3)
