"""The memory-saving training modes give standard backprop's values and gradients."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import glowlab
from glowlab.memory import run_flow, saved_activation_bytes
from glowlab.models.base import FlowModel
from glowlab.transforms import ActNorm, BatchNormFlow, FlowSequential

MODES = ("invertible", "checkpoint")


def _perturb(model: FlowModel, scale: float = 0.05) -> None:
    """Move every parameter off its (often zero) initial value so no gradient is trivial."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def _images(model: FlowModel, batch: int = 4) -> Tensor:
    return torch.rand(batch, *model.image_shape) - 0.5


def _loss_and_grads(
    model: FlowModel, mode: str, x: Tensor, y: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    model.set_memory_mode(mode)  # type: ignore[arg-type]
    output = model.evaluate(x, y)
    loss = -output.log_prob.mean()
    if output.class_logits is not None and y is not None:
        loss = loss + model.class_loss(output, y).mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return output.log_prob.detach(), grads


MODELS: dict[str, Callable[[], FlowModel]] = {
    "glow-affine-lu": lambda: glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=8),
    "glow-additive-conv": lambda: glowlab.Glow(
        (3, 8, 8), levels=2, steps=2, hidden_channels=8, coupling="additive", permutation="conv1x1"
    ),
    "glow-affine-conv-shuffle": lambda: glowlab.Glow(
        (1, 8, 8), levels=2, steps=2, hidden_channels=8, permutation="shuffle", learn_top=False
    ),
    "nice": lambda: glowlab.NICE((1, 4, 4), couplings=4, hidden_features=16, hidden_layers=2),
    "realnvp-no-bn": lambda: glowlab.RealNVP(
        (3, 8, 8), levels=2, hidden_channels=8, res_blocks=1, batch_norm=False
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_equal_standard_backprop(name: str, mode: str) -> None:
    model = MODELS[name]()
    x = _images(model)
    model.log_prob(x)  # ActNorm's data-dependent init
    _perturb(model)
    ref_lp, ref_grads = _loss_and_grads(model, "standard", x)
    lp, grads = _loss_and_grads(model, mode, x)
    assert torch.allclose(lp, ref_lp, rtol=1e-12, atol=1e-10)
    assert grads.keys() == dict(model.named_parameters()).keys()  # every parameter has a grad
    for key, ref in ref_grads.items():
        assert torch.allclose(grads[key], ref, rtol=1e-8, atol=1e-10), key


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("frozen", ["loc", "pairs"])
def test_frozen_pair_parameters(mode: str, frozen: str) -> None:
    """Only some of the folded pairs' parameters train (a fine-tuning case): the others get
    no gradient, and the rest get standard backprop's."""
    model = MODELS["glow-affine-lu"]()
    x = _images(model)
    model.log_prob(x)
    _perturb(model)
    for name, p in model.named_parameters():
        pair_param = ".flow.transforms." in name and ".net." not in name
        p.requires_grad_(not pair_param or (frozen == "loc" and name.endswith(".loc")))
    ref_lp, ref_grads = _loss_and_grads(model, "standard", x)
    lp, grads = _loss_and_grads(model, mode, x)
    assert torch.allclose(lp, ref_lp, rtol=1e-12, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    assert any(k.endswith(".loc") for k in grads) == (frozen == "loc")
    for key, ref in ref_grads.items():
        assert torch.allclose(grads[key], ref, rtol=1e-8, atol=1e-10), key


@pytest.mark.parametrize("mode", MODES)
def test_class_conditional_gradients(mode: str) -> None:
    model = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=8, num_classes=3)
    x, y = _images(model), torch.tensor([0, 1, 2, 1])
    model.evaluate(x, y)
    _perturb(model)
    ref_lp, ref_grads = _loss_and_grads(model, "standard", x, y)
    lp, grads = _loss_and_grads(model, mode, x, y)
    assert torch.allclose(lp, ref_lp, rtol=1e-12, atol=1e-10)
    for key, ref in ref_grads.items():
        assert torch.allclose(grads[key], ref, rtol=1e-8, atol=1e-10), key


def test_float_context_receives_its_gradient() -> None:
    class Shift(ActNorm):
        """ActNorm whose output is shifted by a float context, to exercise its gradient."""

        def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
            z, logdet = super().forward(x, context)
            return z + context.view(-1, 1, 1, 1), logdet  # type: ignore[union-attr]

        def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
            return super().inverse(z - context.view(-1, 1, 1, 1), context)  # type: ignore[union-attr]

    flow = FlowSequential([Shift(2), Shift(2)]).eval()
    x = torch.randn(3, 2, 2, 2)
    context = torch.randn(3, requires_grad=True)
    results = []
    for mode in (None, "invertible"):
        z, logdet = flow(x, context) if mode is None else run_flow(flow, x, context, mode)
        (g,) = torch.autograd.grad((z**2).sum() + logdet.sum(), [context])
        results.append(g)
    assert torch.allclose(results[0], results[1], rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_actnorm_init_in_memory_mode_matches_standard(mode: str) -> None:
    torch.manual_seed(1)
    reference = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=8)
    torch.manual_seed(1)
    model = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=8).set_memory_mode(mode)  # type: ignore[arg-type]
    x = _images(model) * 3 + 0.2
    ref_lp = reference.log_prob(x)
    lp = model.log_prob(x)
    lp.mean().backward()
    assert torch.allclose(lp, ref_lp, rtol=1e-12)
    ref_state, state = reference.state_dict(), model.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    assert all(not m.needs_init() for m in model.modules() if isinstance(m, ActNorm))


def test_memory_mode_is_not_saved() -> None:
    model = glowlab.Glow((3, 8, 8), levels=2, steps=1, hidden_channels=8)
    keys = set(model.state_dict())
    model.set_memory_mode("invertible")
    assert set(model.state_dict()) == keys
    fresh = glowlab.Glow((3, 8, 8), levels=2, steps=1, hidden_channels=8)
    fresh.load_state_dict(model.state_dict())
    assert fresh.memory_mode == "standard"


def test_saved_activations_constant_in_depth_for_invertible_mode() -> None:
    saved: dict[str, list[int]] = {"standard": [], "invertible": [], "checkpoint": []}
    for steps in (2, 4, 8):  # two or more: a flow's folded pairs are computed together
        for mode, sizes in saved.items():
            torch.manual_seed(0)
            model = glowlab.Glow((3, 8, 8), levels=2, steps=steps, hidden_channels=8)
            x = _images(model)
            model.log_prob(x)
            model.set_memory_mode(mode)  # type: ignore[arg-type]
            sizes.append(saved_activation_bytes(lambda m=model, x=x: m.log_prob(x), exclude=model))
    two, four, eight = saved["invertible"]
    assert two == four == eight  # one output per level, whatever the depth
    two, four, eight = saved["standard"]
    assert two < four < eight and eight - four == 2 * (four - two)  # linear in the depth
    assert all(c < s for c, s in zip(saved["checkpoint"], saved["standard"], strict=True))
    assert saved["invertible"][-1] < saved["checkpoint"][-1]


def test_no_grad_and_eval_paths_are_unchanged() -> None:
    model = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=8)
    x = _images(model)
    model.log_prob(x)
    expected = model.log_prob(x)
    model.set_memory_mode("invertible")
    with torch.no_grad():
        assert torch.equal(model.log_prob(x), expected)
    samples = model.eval().sample(2, temperature=0.5)
    assert samples.shape == (2, 3, 8, 8)


def test_float32_reconstruction_drift_is_small() -> None:
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores float64
    model = glowlab.Glow((3, 16, 16), levels=2, steps=4, hidden_channels=16)
    x = _images(model)
    model.log_prob(x)
    _perturb(model, 0.02)
    _, ref_grads = _loss_and_grads(model, "standard", x)
    _, grads = _loss_and_grads(model, "invertible", x)
    for key, ref in ref_grads.items():
        scale = ref.abs().max().clamp_min(1e-6)
        assert ((grads[key] - ref).abs().max() / scale) < 1e-3, key


def test_batchnorm_flow_training_rejected_by_invertible_mode() -> None:
    model = glowlab.RealNVP((3, 8, 8), levels=2, hidden_channels=8, res_blocks=1)
    model.set_memory_mode("invertible")
    with pytest.raises(ValueError, match=r"BatchNormFlow.*checkpoint"):
        model.log_prob(_images(model))
    # In evaluation mode the layer is an ordinary bijection, and the mode works.
    model.eval()
    lp = model.log_prob(_images(model))
    lp.mean().backward()


def test_checkpoint_updates_running_statistics_once() -> None:
    torch.manual_seed(2)
    reference = glowlab.RealNVP((3, 8, 8), levels=2, hidden_channels=8, res_blocks=1)
    model = glowlab.RealNVP((3, 8, 8), levels=2, hidden_channels=8, res_blocks=1)
    model.load_state_dict(reference.state_dict())
    _perturb(reference)
    model.load_state_dict(reference.state_dict())
    x = _images(model, 6)
    ref_lp, ref_grads = _loss_and_grads(reference, "standard", x)
    lp, grads = _loss_and_grads(model, "checkpoint", x)
    assert torch.allclose(lp, ref_lp, rtol=1e-12)
    for key, ref in ref_grads.items():
        assert torch.allclose(grads[key], ref, rtol=1e-8, atol=1e-10), key
    ref_state, state = reference.state_dict(), model.state_dict()
    for key in ref_state:
        assert torch.allclose(state[key].double(), ref_state[key].double(), rtol=1e-12), key
    assert any(isinstance(m, BatchNormFlow) for m in model.modules())


def test_run_flow_rejects_unknown_mode() -> None:
    flow = FlowSequential([ActNorm(2)])
    with pytest.raises(ValueError, match="invertible"):
        run_flow(flow, torch.randn(2, 2), None, "standard")  # type: ignore[arg-type]
