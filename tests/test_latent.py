"""Latent-space tools: interpolation paths, class sampling, directions, compression."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import glowlab
from glowlab.latent import (
    COMPRESSION_FRACTIONS,
    Direction,
    attribute_direction,
    compress,
    encode_images,
    interpolate,
    interpolate_path,
    keep_masks,
    load_direction,
    manipulate,
    reconstruct,
    sample_classes,
    save_direction,
)
from glowlab.metrics import dequantize, quantize


def _glow(num_classes: int | None = None, shape=(1, 8, 8), levels: int = 2) -> glowlab.Glow:
    """A small Glow whose ActNorm layers are initialised on data and whose prior is not zero."""
    model = glowlab.Glow(shape, levels=levels, steps=2, hidden_channels=8, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():  # leave the zero-initialised state: a generic bijection
            p.add_(0.05 * torch.randn_like(p))
        x = torch.rand(32, *shape) - 0.5
        y = None if num_classes is None else torch.randint(num_classes, (32,))
        model.train()
        model.evaluate(x, y)
    return model.eval()


def _images(n: int, shape=(1, 8, 8)) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8)


def test_interpolate_path_reproduces_every_waypoint() -> None:
    model = _glow()
    x = dequantize(_images(3), noise=False)
    steps = 5
    path = interpolate_path(model, x, steps)
    assert path.shape == ((3 - 1) * (steps - 1) + 1, 1, 8, 8)
    for k in range(3):
        torch.testing.assert_close(path[k * (steps - 1)], x[k], atol=1e-10, rtol=0)
    # In between, the latents are the convex combinations of the waypoints' latents.
    z = encode_images(model, x)
    mid = encode_images(model, path[2:3])
    for level, zl in enumerate(z):
        torch.testing.assert_close(mid[level][0], 0.5 * (zl[0] + zl[1]), atol=1e-9, rtol=0)


def test_interpolate_path_slerp_keeps_endpoints_and_norm_between() -> None:
    model = _glow()
    x = dequantize(_images(2), noise=False)
    path = interpolate_path(model, x, 7, "slerp")
    torch.testing.assert_close(path[0], x[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(path[-1], x[1], atol=1e-10, rtol=0)
    z = encode_images(model, x)
    zm = encode_images(model, path[3:4])
    for zl, ml in zip(z, zm, strict=True):
        lo, hi = sorted([float(zl[0].norm()), float(zl[1].norm())])
        assert lo - 1e-6 <= float(ml[0].norm()) <= hi + 1e-6  # slerp stays on the arc


def test_interpolate_path_conditional_uses_each_endpoint_class() -> None:
    model = _glow(num_classes=3)
    x = dequantize(_images(3), noise=False)
    y = torch.tensor([0, 2, 1])
    path = interpolate_path(model, x, 4, y=y)
    for k in range(3):
        torch.testing.assert_close(path[k * 3], x[k], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="class-conditional"):
        interpolate_path(model, x, 4)


def test_interpolate_path_rejects_bad_input() -> None:
    model = _glow()
    with pytest.raises(ValueError, match="at least 2 images"):
        interpolate_path(model, torch.zeros(1, 1, 8, 8), 4)
    with pytest.raises(ValueError, match="shape"):
        interpolate_path(model, torch.zeros(2, 3, 8, 8), 4)
    with pytest.raises(ValueError, match="steps"):
        interpolate_path(model, torch.zeros(2, 1, 8, 8), 1)


def test_latent_functions_check_images_as_the_model_does_and_name_themselves() -> None:
    model = _glow()
    with pytest.raises(ValueError, match=r"reconstruct expects images of shape \(B, 1, 8, 8\)"):
        reconstruct(model, torch.zeros(2, 3, 8, 8))
    with pytest.raises(TypeError, match=r"compress expects float images .* torch\.uint8"):
        compress(model, _images(2), [1.0])
    with pytest.raises(TypeError, match=r"manipulate expects a torch\.Tensor, got list"):
        manipulate(model, [[0.0]], Direction([]), [0.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"attribute_direction \(negative images\) expects"):
        attribute_direction(model, torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8))


def test_reconstruct_error_is_rounding_only() -> None:
    model = _glow()
    images = _images(6)
    x = dequantize(images, noise=False)
    x_hat, error = reconstruct(model, x)
    assert error < 1e-10
    assert torch.equal(quantize(x_hat), images)
    torch.set_default_dtype(torch.float32)  # built in float32 (the conftest restores float64)
    model32 = _glow()
    _, error32 = reconstruct(model32, x.float())
    assert error32 < 1 / 256 / 100


def test_sample_classes_is_class_major_and_uses_the_class() -> None:
    model = _glow(num_classes=4)
    with torch.no_grad():
        model.top.embed.weight.normal_()  # classes must change the prior for this test
    samples = sample_classes(model, [3, 1], n_per_class=2, temperature=0.0)
    assert samples.shape == (4, 1, 8, 8)
    zeros = [torch.zeros(4, *s) for s in model.latent_shapes]
    expected = model.decode(zeros, torch.tensor([3, 3, 1, 1]))
    torch.testing.assert_close(samples, expected)
    assert not torch.allclose(samples[0], samples[2])
    assert sample_classes(model, None, 1).shape == (4, 1, 8, 8)


def test_sample_classes_rejects_models_without_classes_and_bad_classes() -> None:
    with pytest.raises(ValueError, match="not trained with classes"):
        sample_classes(_glow(), [0], 2)
    model = _glow(num_classes=3)
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        sample_classes(model, [3], 2)
    with pytest.raises(ValueError, match="n_per_class"):
        sample_classes(model, [0], 0)


def test_attribute_direction_is_the_difference_of_mean_latents() -> None:
    model = _glow()
    pos = dequantize(_images(5), noise=False)
    neg = dequantize(_images(7), noise=False)
    direction = attribute_direction(model, pos, neg, metadata={"attribute": "test"})
    zp, zn = model.encode(pos), model.encode(neg)
    for d, a, b in zip(direction.latents, zp, zn, strict=True):
        torch.testing.assert_close(d, a.mean(0) - b.mean(0))
    assert direction.metadata["positive_count"] == 5
    assert direction.metadata["attribute"] == "test"
    assert direction.shapes == [tuple(s) for s in model.latent_shapes]


def test_manipulate_alpha_zero_is_the_input_and_alpha_moves_the_latent() -> None:
    model = _glow()
    images = _images(3)
    x = dequantize(images, noise=False)
    direction = Direction([0.3 * torch.randn(s) for s in model.latent_shapes])
    out = manipulate(model, x, direction, [0.0, 1.0, -2.0])
    assert out.shape == (3, 3, 1, 8, 8)
    torch.testing.assert_close(out[0], x, atol=1e-10, rtol=0)
    assert torch.equal(quantize(out[0]), images)
    z = model.encode(x)
    for alpha, row in ((1.0, out[1]), (-2.0, out[2])):
        for zl, el, d in zip(z, model.encode(row), direction.latents, strict=True):
            torch.testing.assert_close(el, zl + alpha * d, atol=1e-8, rtol=0)


def test_manipulate_rejects_bad_alpha_and_foreign_direction() -> None:
    model = _glow()
    x = torch.zeros(1, 1, 8, 8)
    good = Direction([torch.zeros(s) for s in model.latent_shapes])
    with pytest.raises(ValueError, match="alpha must be a number"):
        manipulate(model, x, good, ["big"])
    with pytest.raises(ValueError, match="finite"):
        manipulate(model, x, good, [math.nan])
    with pytest.raises(ValueError, match="different model"):
        manipulate(model, x, Direction([torch.zeros(3)]), [1.0])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_direction_save_load_round_trip(tmp_path, suffix: str) -> None:
    direction = Direction(
        [torch.randn(2, 4, 4), torch.randn(8, 2, 2)], {"attribute": "smile", "n": 3}
    )
    path = save_direction(direction, tmp_path / f"d{suffix}")
    loaded = load_direction(path)
    assert loaded.metadata == direction.metadata
    for a, b in zip(loaded.latents, direction.latents, strict=True):
        assert torch.equal(a, b)
    (tmp_path / "bad.pt").write_bytes(b"not a direction")
    with pytest.raises(ValueError, match="not a glowlab direction"):
        load_direction(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_direction(tmp_path / "missing.pt")


def test_a_failed_direction_write_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    path = save_direction(Direction([torch.ones(2, 4, 4)], {"attribute": "old"}), tmp_path / "d.pt")
    before = path.read_bytes()

    def full_disk(obj, file) -> None:  # what torch.save does when the disk fills up
        Path(file).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"cannot write the direction file .*d\.pt: \[enforce fail"):
        save_direction(Direction([torch.zeros(2, 4, 4)], {"attribute": "new"}), path)
    assert path.read_bytes() == before and load_direction(path).metadata == {"attribute": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pt"]


def test_keep_masks_rank_levels_from_the_top() -> None:
    shapes = [(6, 16, 16), (12, 8, 8), (48, 4, 4)]  # Glow L=3 on 3x32x32: 1536, 768, 768
    total = sum(math.prod(s) for s in shapes)
    previous = None
    for fraction in COMPRESSION_FRACTIONS:
        masks = keep_masks(shapes, fraction)
        assert [tuple(m.shape) for m in masks] == shapes
        assert sum(int(m.sum()) for m in masks) == round(fraction * total)
        if previous is not None:  # nested: a smaller fraction keeps a subset
            assert all(bool((m & ~p).sum() == 0) for m, p in zip(masks, previous, strict=True))
        previous = masks
    half = keep_masks(shapes, 0.5)
    assert [int(m.sum()) for m in half] == [0, 768, 768]
    quarter = keep_masks(shapes, 0.25)
    assert [int(m.sum()) for m in quarter] == [0, 0, 768]
    eighth = keep_masks(shapes, 0.125)[2]
    assert bool(eighth[:24].all()) and not bool(eighth[24:].any())  # the first 24 channels
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        keep_masks(shapes, 1.5)


def test_compress_keeps_the_chosen_latents_and_resamples_the_rest() -> None:
    model = _glow(shape=(1, 8, 8), levels=2)
    x = dequantize(_images(2), noise=False)
    out = compress(
        model, x, [1.0, 0.5, 0.25, 0.0], temperature=0.7, generator=torch.Generator().manual_seed(1)
    )
    assert out.shape == (4, 2, 1, 8, 8)
    torch.testing.assert_close(out[0], x, atol=1e-10, rtol=0)
    z = model.encode(x)
    for row, fraction in zip(out, [1.0, 0.5, 0.25, 0.0], strict=True):
        zr = model.encode(row)
        for mask, a, b in zip(keep_masks(model.latent_shapes, fraction), z, zr, strict=True):
            torch.testing.assert_close(b[:, mask], a[:, mask], atol=1e-8, rtol=0)
            if bool((~mask).any()):
                assert not torch.allclose(b[:, ~mask], a[:, ~mask])


def test_interpolate_reproduces_both_endpoints_with_different_classes() -> None:
    model = glowlab.Glow((1, 4, 4), levels=1, steps=1, hidden_channels=8, num_classes=3)
    model.train()
    with torch.no_grad():
        model.evaluate(torch.rand(16, 1, 4, 4) - 0.5, torch.arange(16) % 3)
    with torch.no_grad():
        for p in model.parameters():  # class embeddings that actually differ
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    x_a, x_b = torch.rand(2, 1, 4, 4) - 0.5, torch.rand(2, 1, 4, 4) - 0.5
    y_a, y_b = torch.tensor([0, 1]), torch.tensor([2, 2])
    path = interpolate(model, x_a, x_b, steps=5, y_a=y_a, y_b=y_b)
    torch.testing.assert_close(path[0], x_a, rtol=0, atol=1e-10)
    torch.testing.assert_close(path[-1], x_b, rtol=0, atol=1e-10)
