"""The latent-space commands end to end on a tiny checkpoint, and their one-line errors."""

from __future__ import annotations

import builtins
import errno
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import glowlab
from glowlab.cli import main
from glowlab.imageio import source_settings
from glowlab.latent import attribute_direction, load_direction
from glowlab.metrics import dequantize

PNG = b"\x89PNG\r\n\x1a\n"


def _checkpoint(folder: Path, num_classes: int | None, side: int = 8, name: str = "") -> str:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # checkpoints are float32, as training writes them
    try:
        model = glowlab.Glow(
            (1, side, side), levels=2, steps=1, hidden_channels=8, num_classes=num_classes
        )
        model.train()
        with torch.no_grad():
            y = None if num_classes is None else torch.randint(num_classes, (16,))
            model.evaluate(torch.rand(16, 1, side, side) - 0.5, y)
    finally:
        torch.set_default_dtype(previous)
    name = name or ("conditional" if num_classes else "plain")
    return str(glowlab.save(model.eval(), folder / name))


def _trained_on(checkpoint: str, folder: Path, stem: str, **data: object) -> str:
    """A copy of ``checkpoint``'s manifest in ``folder`` whose training config records ``data``."""
    manifest = Path(checkpoint)
    copy = folder / f"{stem}.json"
    entries = json.loads(manifest.read_text())
    entries["train_config"] = {"data": data}
    copy.write_text(json.dumps(entries))
    weights = manifest.parent / entries["weights"]["file"]
    if not (folder / weights.name).exists():
        (folder / weights.name).write_bytes(weights.read_bytes())
    return str(copy)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tools")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(24) % 3
    np.savez(folder / "data.npz", images=images, labels=labels)
    np.savez(folder / "unlabelled.npz", images=images)
    np.savez(folder / "big.npz", images=rng.integers(0, 256, size=(6, 12, 12, 1), dtype=np.uint8))
    # A model of digits padded to 12x12, as a run with data.image_size=12 trains it.
    padded = _trained_on(
        _checkpoint(folder, None, 12, "padded-weights"), folder, "padded",
        name="digits", image_size=12, n_bits=8,
    )  # fmt: skip
    return {
        "conditional": _checkpoint(folder, 3),
        "plain": _checkpoint(folder, None),
        "padded": padded,
        "data": str(folder / "data.npz"),
        "unlabelled": str(folder / "unlabelled.npz"),
        "big": str(folder / "big.npz"),
        "dir": str(folder),
    }


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


class _HalfWritten:
    """A text file whose first write stores half the text, then fails as on a full disk."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def write(self, text: str) -> int:
        self._handle.write(text[: len(text) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(name)``: from then on, text written to files named ``*name*`` runs out of
    space halfway."""
    real_open = io.open

    def install(name: str) -> None:
        def open_(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            return _HalfWritten(handle) if "w" in mode and name in str(file) else handle

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)

    return install


def _png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(PNG)
    return data


def test_reconstruct_reports_a_tiny_error(files, tmp_path, capsys) -> None:
    out = tmp_path / "rec.png"
    code, text, _ = _run(
        capsys,
        "reconstruct",
        files["conditional"],
        files["data"],
        "--count",
        "5",
        "--out",
        str(out),
    )
    assert code == 0
    error = float(text.split("max |x - decode(encode(x))| = ")[1].split()[0])
    assert error < 1 / 256 / 10
    assert "reproduced exactly: yes" in text
    _png(out)


def test_interpolate_compress_and_manipulate_write_pngs(files, tmp_path, capsys) -> None:
    ckpt, data = files["conditional"], files["data"]
    code, text, _ = _run(
        capsys,
        "interpolate",
        ckpt,
        data,
        "--indices",
        "0",
        "3",
        "5",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "i.png"),
    )
    assert code == 0 and "7 images per row" in text
    assert float(text.split("max |endpoint - input| = ")[1].split()[0]) < 1e-3
    code, text, _ = _run(
        capsys, "compress", ckpt, data, "--count", "3", "--out", str(tmp_path / "c.png")
    )
    assert code == 0 and "keep  50.00%" in text
    direction = tmp_path / "d.safetensors"
    code, text, _ = _run(
        capsys, "manipulate", ckpt, data, "--positive", "1", "--negative", "2", "--label", "0",
        "--alphas", "-1", "0", "1",
        "--save-direction", str(direction), "--out", str(tmp_path / "m.png"),
    )  # fmt: skip
    assert code == 0 and "8 images with, 8 without" in text
    assert float(text.split("alpha = 0: max |output - input| = ")[1].split()[0]) < 1e-3
    assert load_direction(direction).metadata["attribute"] == "class 1 vs class 2"
    code, _, _ = _run(
        capsys,
        "manipulate",
        ckpt,
        data,
        "--direction",
        str(direction),
        "--out",
        str(tmp_path / "m2.png"),
    )
    assert code == 0
    for name in ("i", "c", "m", "m2"):
        _png(tmp_path / f"{name}.png")


def test_manipulate_with_an_attribute_csv(files, tmp_path, capsys) -> None:
    table = tmp_path / "attributes.csv"
    rows = ["image,Bright"] + [f"data.npz[{i}],{int(i % 2 == 0)}" for i in range(24)]
    table.write_text("\n".join(rows) + "\n")
    code, text, _ = _run(
        capsys, "manipulate", files["plain"], files["data"], "--attributes", str(table),
        "--attribute", "Bright", "--out", str(tmp_path / "a.png"),
    )  # fmt: skip
    assert code == 0 and "12 images with, 12 without" in text
    code, _, err = _run(
        capsys, "manipulate", files["plain"], files["data"], "--attributes", str(table),
        "--attribute", "Smiling", "--out", str(tmp_path / "a.png"),
    )  # fmt: skip
    assert code == 2 and "unknown attribute 'Smiling'" in err


def test_restore_prints_metrics_for_each_task(files, tmp_path, capsys) -> None:
    metrics = tmp_path / "m.json"
    code, text, _ = _run(
        capsys, "restore", files["plain"], files["data"], "--count", "2", "--steps", "3",
        "--out", str(tmp_path / "r.png"), "--json", str(metrics),
    )  # fmt: skip
    assert code == 0
    assert set(json.loads(metrics.read_text())) == {"inpaint", "denoise", "super-resolution"}
    assert "baseline MSE" in text
    _png(tmp_path / "r.png")


def test_ood_prints_aurocs_and_writes_histograms(files, tmp_path, capsys) -> None:
    code, text, _ = _run(
        capsys, "ood", files["plain"], "--in", files["data"], "--reference", files["unlabelled"],
        "--outliers", "noise", files["big"], "--count", "20", "--plot", str(tmp_path / "h.png"),
        "--json", str(tmp_path / "o.json"),
    )  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "o.json").read_text())
    assert set(result["auroc"]) == {"likelihood", "typicality", "complexity"}
    assert set(result["auroc"]["likelihood"]) == {"noise", files["big"]}
    assert "AUROC" in text
    _png(tmp_path / "h.png")


def test_toy_command(tmp_path, capsys) -> None:
    out = tmp_path / "toy.png"
    code, text, _ = _run(
        capsys, "toy", "--density", "checkerboard", "--steps", "20", "--layers", "2",
        "--hidden", "16",
        "--points", "300", "--out", str(out),
    )  # fmt: skip
    assert code == 0 and "probability mass" in text
    _png(out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reconstruct", "{conditional}", "{big}"], "pass --fit pad or --fit resize"),
        (["reconstruct", "{conditional}", "{unlabelled}"], "pass --label K"),
        (["reconstruct", "{plain}", "{data}", "--label", "1"], "this checkpoint has no classes"),
        (["manipulate", "{plain}", "{data}", "--positive", "1", "--alphas", "nan"], "finite"),
        (["restore", "{plain}", "{data}", "--task", "colorize"], "RGB"),
        (["interpolate", "{plain}", "{data}", "--indices", "0", "99"], "--indices"),
        (["reconstruct", "{dir}/missing.json", "{data}"], "does not exist"),
        (["reconstruct", "{plain}", "no-such-dataset"], "neither a file"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    files, capsys, argv: list[str], message: str
) -> None:
    code, _, err = _run(capsys, *[a.format(**files) for a in argv])
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_alpha_that_is_not_a_number_is_a_usage_error(files, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["manipulate", files["plain"], files["data"], "--positive", "1", "--alphas", "big"])
    assert exit_info.value.code == 2
    assert "invalid float value: 'big'" in capsys.readouterr().err


def test_attribute_csv_that_names_only_some_images_is_an_error(files, tmp_path, capsys) -> None:
    table = tmp_path / "partial.csv"
    rows = ["image,Bright"] + [f"data.npz[{i}],{int(i % 2 == 0)}" for i in range(23)]
    table.write_text("\n".join([*rows, "typo.png,1"]) + "\n")
    code, _, err = _run(
        capsys, "manipulate", files["plain"], files["data"], "--attributes", str(table),
        "--attribute", "Bright", "--out", str(tmp_path / "a.png"),
    )  # fmt: skip
    assert code == 2 and "names some images but not 'data.npz[23]'" in err


def test_reconstruct_compares_at_the_models_bit_depth(files, tmp_path, capsys) -> None:
    five_bit = _trained_on(files["plain"], tmp_path, "five", n_bits=5)
    code, text, _ = _run(
        capsys, "reconstruct", five_bit, files["data"], "--out", str(tmp_path / "r.png")
    )
    assert code == 0
    assert "grey levels of 3.125e-02" in text  # the model's 5 bits, not the images' 8
    assert "8-bit images reproduced exactly: yes" in text


def test_n_bits_sets_the_bit_depth_of_a_checkpoint_that_does_not_record_it(
    files, tmp_path, capsys
) -> None:
    # A model saved with glowlab.save, or a weights file, records no training config.
    weights = next(Path(files["plain"]).parent.glob("plain-*.safetensors"))
    for checkpoint in (files["plain"], str(weights)):
        code, text, _ = _run(
            capsys, "reconstruct", checkpoint, files["data"], "--n-bits", "5",
            "--out", str(tmp_path / "r.png"),
        )  # fmt: skip
        assert code == 0 and "grey levels of 3.125e-02" in text
    five_bit = _trained_on(files["plain"], tmp_path, "five", n_bits=5)
    code, text, _ = _run(
        capsys, "reconstruct", five_bit, files["data"], "--n-bits", "8",
        "--out", str(tmp_path / "r.png"),
    )  # fmt: skip
    assert code == 0 and "grey levels of 3.906e-03" in text  # the option wins
    base = ["--in", files["data"], "--reference", files["unlabelled"], "--count", "10",
            "--plot", str(tmp_path / "o.png")]  # fmt: skip
    means = []
    for n_bits in ("5", "8"):
        code, text, _ = _run(capsys, "ood", files["plain"], *base, "--n-bits", n_bits)
        assert code == 0
        means.append(float(text.split("bits/dim mean ")[1].split()[0]))
    assert means[0] < means[1] - 1  # about 3 bits/dim less at 5 bits than at 8
    for bad in ("0", "9"):
        code, _, err = _run(capsys, "ood", files["plain"], *base, "--n-bits", bad)
        assert code == 2 and f"--n-bits must be in [1, 8], got {bad}" in err


def test_ood_needs_a_reference_for_file_inputs(files, tmp_path, capsys) -> None:
    code, _, err = _run(
        capsys, "ood", files["plain"], "--in", files["data"], "--outliers", "noise",
        "--plot", str(tmp_path / "o.png"),
    )  # fmt: skip
    assert code == 2 and "pass --reference" in err


def test_output_path_that_is_a_folder_is_one_line(files, tmp_path, capsys) -> None:
    argv = ["reconstruct", files["plain"], files["data"], "--out", str(tmp_path)]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.strip().splitlines() == [
        f"glowlab reconstruct: error: {tmp_path} is a folder; give a file name for the PNG"
    ]
    assert not list(tmp_path.glob(".*.tmp"))


def test_diverging_toy_flow_is_one_line_with_exit_code_1(tmp_path, capsys) -> None:
    code, _, err = _run(
        capsys, "toy", "--steps", "20", "--lr", "1e9", "--out", str(tmp_path / "t.png")
    )
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "non-finite" in err


def test_interpolate_rejects_negative_indices(files, tmp_path, capsys) -> None:
    code, _, err = _run(
        capsys, "interpolate", files["plain"], files["data"], "--indices", "-1", "0",
        "--out", str(tmp_path / "i.png"),
    )  # fmt: skip
    assert code == 2 and "non-negative" in err


def test_the_training_dataset_is_read_at_the_training_size(files, tmp_path, capsys) -> None:
    # digits are 8x8; the model was trained on them padded to 12x12.
    for command, *options in (
        ["reconstruct", "--count", "2"],
        ["compress", "--count", "2"],
        ["interpolate", "--indices", "0", "1", "--steps", "3"],
        ["restore", "--count", "2", "--steps", "1", "--task", "denoise"],
    ):
        code, _, err = _run(
            capsys, command, files["padded"], "Digits:test", *options,
            "--out", str(tmp_path / f"{command}.png"),
        )  # fmt: skip
        assert code == 0, err
    code, text, _ = _run(
        capsys, "manipulate", files["padded"], "digits:test", "--from", "digits:train",
        "--positive", "0", "--negative", "1", "--count", "2", "--out", str(tmp_path / "m.png"),
    )  # fmt: skip
    assert code == 0 and "alpha = 0" in text
    # Other images, and an explicit --fit none, still have to match the model.
    code, _, err = _run(capsys, "reconstruct", files["padded"], "digits:test", "--fit", "none")
    assert code == 2 and "pass --fit pad or --fit resize" in err
    code, _, err = _run(capsys, "reconstruct", files["plain"], files["big"])
    assert code == 2 and "pass --fit pad or --fit resize" in err


def test_source_settings_follow_the_training_config() -> None:
    trained = {"name": "mnist", "data_dir": "/data", "image_size": 32}
    assert source_settings("MNIST:test", "auto", None, trained) == ("none", "/data", 32)
    assert source_settings("mnist:train", "auto", "mine", trained) == ("none", "mine", 32)
    assert source_settings("mnist:test", "pad", None, trained) == ("pad", "/data", None)
    assert source_settings("digits:test", "auto", None, trained) == ("none", None, None)
    assert source_settings("digits:test", "auto", None, trained, "pad") == ("pad", None, None)
    assert source_settings("mnist:test", "auto", None, {}) == ("none", None, None)


def test_ood_fits_the_in_distribution_and_reference_sets(files, tmp_path, capsys) -> None:
    # The training dataset as in training; other sets, --in and --reference included, padded.
    for inliers, reference in (("digits:test", None), (files["data"], files["unlabelled"])):
        argv = ["ood", files["padded"], "--in", inliers, "--outliers", "noise", files["big"],
                "--count", "20", "--plot", str(tmp_path / "o.png")]  # fmt: skip
        code, text, err = _run(capsys, *argv, *(["--reference", reference] if reference else []))
        assert code == 0, err
        assert f"typicality entropy H from {reference or 'digits:train'}" in text
    code, _, err = _run(capsys, "ood", files["padded"], "--in", "digits:test", "--fit", "none")
    assert code == 2 and "pass --fit pad or --fit resize" in err


def test_a_failed_json_write_keeps_the_previous_file(files, tmp_path, capsys, full_disk) -> None:
    restore = ["restore", files["plain"], files["data"], "--count", "2", "--steps", "1",
               "--task", "denoise", "--out", str(tmp_path / "r.png"),
               "--json", str(tmp_path / "r.json")]  # fmt: skip
    ood = ["ood", files["plain"], "--in", files["data"], "--reference", files["unlabelled"],
           "--count", "10", "--plot", str(tmp_path / "o.png"),
           "--json", str(tmp_path / "o.json")]  # fmt: skip
    for argv in (restore, ood):
        assert _run(capsys, *argv)[0] == 0
    before = {name: (tmp_path / name).read_text() for name in ("r.json", "o.json")}
    full_disk(".json")
    for argv in (restore, ood):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and err.strip().endswith("No space left on device")
    for name, text in before.items():
        assert (tmp_path / name).read_text() == text
        json.loads(text)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_direction_write_is_one_line(files, tmp_path, capsys, monkeypatch) -> None:
    direction = tmp_path / "d.pt"
    argv = ["manipulate", files["plain"], files["data"], "--positive", "1", "--count", "2",
            "--save-direction", str(direction), "--out", str(tmp_path / "m.png")]  # fmt: skip
    assert _run(capsys, *argv)[0] == 0
    before = direction.read_bytes()

    def full_disk(obj, file) -> None:  # what torch.save does when the disk fills up
        Path(file).write_bytes(before[:100])
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", full_disk)
    code, _, err = _run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot write the direction file" in err
    assert direction.read_bytes() == before


def test_restore_writes_the_png_before_the_json(files, tmp_path, capsys, full_disk) -> None:
    argv = ["restore", files["plain"], files["data"], "--count", "2", "--steps", "1",
            "--task", "denoise", "--out", str(tmp_path / "r.png")]  # fmt: skip
    full_disk("m.json")
    code, _, err = _run(capsys, *argv, "--json", str(tmp_path / "m.json"))
    assert code == 2 and "No space left on device" in err
    _png(tmp_path / "r.png")  # the restoration is kept even though its metrics were not
    code, _, _ = _run(capsys, *argv, "--json", str(tmp_path / "new" / "metrics.json"))
    assert code == 0 and "denoise" in json.loads((tmp_path / "new" / "metrics.json").read_text())


@pytest.mark.parametrize("command", ["restore", "ood", "manipulate"])
def test_unwritable_outputs_fail_before_any_work(files, tmp_path, capsys, command) -> None:
    (tmp_path / "file").write_text("")
    argv = {
        "restore": ["restore", files["plain"], files["data"], "--count", "2", "--steps", "1",
                    "--out", str(tmp_path / "r.png"), "--json"],
        "ood": ["ood", files["plain"], "--in", files["data"], "--reference", files["data"],
                "--count", "10", "--plot", str(tmp_path / "o.png"), "--json"],
        "manipulate": ["manipulate", files["plain"], files["data"], "--positive", "1",
                       "--out", str(tmp_path / "m.png"), "--save-direction"],
    }[command]  # fmt: skip
    for target, message in ((tmp_path, "is a folder"), (tmp_path / "file" / "x", "is a file")):
        code, out, err = _run(capsys, *argv, str(target))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
        assert out == ""  # nothing was computed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_manipulate_encodes_the_labelled_images_with_the_models_classes(
    files, tmp_path, capsys
) -> None:
    # Labels 20 and 21 are attribute classes, not the conditional model's classes 0..2.
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(8, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "attr.npz", images=images, labels=np.array([20, 21] * 4))
    argv = ["manipulate", files["conditional"], files["data"], "--from", str(tmp_path / "attr.npz"),
            "--positive", "20", "--negative", "21", "--count", "2",
            "--out", str(tmp_path / "m.png")]  # fmt: skip
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "are not its classes; pass --label K" in err
    code, _, err = _run(capsys, *argv, "--label", "2", "--save-direction", str(tmp_path / "d.pt"))
    assert code == 0, err
    model = glowlab.load(files["conditional"])
    x = dequantize(torch.from_numpy(images.transpose(0, 3, 1, 2)), noise=False)
    x = x.to(model._reference())
    expected = attribute_direction(
        model, x[0::2], x[1::2], torch.full((4,), 2), torch.full((4,), 2)
    )
    for got, want in zip(load_direction(tmp_path / "d.pt").latents, expected.latents, strict=True):
        torch.testing.assert_close(got, want)
    # The labels of the model's own training dataset are its classes.
    digits = _trained_on(files["conditional"], tmp_path, "cond-digits", name="digits", n_bits=8)
    code, text, err = _run(
        capsys, "manipulate", digits, files["data"], "--from", "digits:train", "--positive", "0",
        "--negative", "1", "--count", "2", "--out", str(tmp_path / "m.png"),
    )  # fmt: skip
    assert code == 0 and "class 0 vs class 1" in text, err


@pytest.mark.parametrize("value", ["0", "-3"])
def test_manipulate_needs_a_positive_max_images(files, tmp_path, capsys, value: str) -> None:
    code, out, err = _run(
        capsys, "manipulate", files["plain"], files["data"], "--positive", "1",
        "--max-images", value, "--out", str(tmp_path / "m.png"),
    )  # fmt: skip
    assert code == 2 and out == ""
    assert err == f"glowlab manipulate: error: --max-images must be >= 1, got {value}\n"


@pytest.mark.parametrize(
    ("device", "message"),
    [("bogus", "unknown device 'bogus'; choose auto, cpu or cuda"),
     ("cuda", "device cuda was requested but CUDA is not available; use --device cpu")],
)  # fmt: skip
def test_a_bad_device_is_named_as_such(files, capsys, monkeypatch, device, message) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["reconstruct", files["plain"], files["data"]],
                 ["ood", files["plain"], "--in", files["data"]]):  # fmt: skip
        code, _, err = _run(capsys, *argv, "--device", device)
        assert code == 2 and err == f"glowlab {argv[0]}: error: {message}\n"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--sigma", "inf", "--sigma must be a finite number > 0, got inf"),
        ("--sigma", "-1", "--sigma must be a finite number > 0, got -1.0"),
        ("--mask-size", "1", "--mask-size must be in (0, 1), got 1.0"),
        ("--steps", "-1", "--steps must be >= 0, got -1"),
        ("--lr", "nan", "--lr must be a finite number > 0, got nan"),
        ("--zoom", "0", "--zoom must be >= 1, got 0"),
    ],
)
def test_restore_checks_its_numbers_before_any_task(
    files, tmp_path, capsys, option, value, message
) -> None:
    code, out, err = _run(
        capsys, "restore", files["plain"], files["data"], "--count", "2", "--steps", "1",
        "--out", str(tmp_path / "r.png"), option, value,
    )  # fmt: skip
    assert code == 2 and err == f"glowlab restore: error: {message}\n"
    assert out == ""  # no task ran


def test_manipulate_checks_alphas_before_computing_the_direction(files, tmp_path, capsys) -> None:
    code, out, err = _run(
        capsys, "manipulate", files["plain"], files["data"], "--positive", "1",
        "--alphas", "0", "inf", "--out", str(tmp_path / "m.png"),
    )  # fmt: skip
    assert (
        code == 2
        and err == "glowlab manipulate: error: --alphas must be finite numbers, got [0.0, inf]\n"
    )
    assert out == ""


@pytest.mark.parametrize("name", ["r.jpg", "r", "r.png.txt"])
def test_png_outputs_must_be_named_png(files, tmp_path, capsys, name: str) -> None:
    out = str(tmp_path / name)
    code, _, err = _run(capsys, "reconstruct", files["plain"], files["data"], "--out", out)
    assert (
        code == 2 and err == f"glowlab reconstruct: error: --out must name a .png file, got {out}\n"
    )
    code, _, err = _run(
        capsys, "ood", files["plain"], "--in", files["data"], "--reference", files["data"],
        "--count", "5", "--plot", out,
    )  # fmt: skip
    assert code == 2 and err == f"glowlab ood: error: --plot must name a .png file, got {out}\n"
    assert list(tmp_path.iterdir()) == []
    code, _, _ = _run(
        capsys, "reconstruct", files["plain"], files["data"], "--out", str(tmp_path / "R.PNG")
    )
    assert code == 0


def test_unreadable_npz_files_are_named(files, tmp_path, capsys) -> None:
    images = np.zeros((2, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "array.npy", images)
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    np.savez(tmp_path / "words.npz", images=images, labels=np.array(["a", "b"]))
    np.savez(tmp_path / "objects.npz", images=np.array([images[0], None], dtype=object))
    (tmp_path / "text.npz").write_text("images\n")
    (tmp_path / "cut.npz").write_bytes((Path(files["data"])).read_bytes()[:300])
    expected = {
        "array.npz": "holds a single array (.npy), not an .npz archive; write one with np.savez",
        "words.npz": "'labels' must be integers (or booleans), got <U1",
        "objects.npz": "holds Python objects; store 'images' as uint8",
        "text.npz": "is not an .npz archive (np.savez writes one)",
        "cut.npz": "is not an .npz archive (np.savez writes one)",
    }
    for name, message in expected.items():
        code, _, err = _run(capsys, "reconstruct", files["plain"], str(tmp_path / name))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    np.savez(tmp_path / "flags.npz", images=images, labels=np.array([True, False]))
    out = str(tmp_path / "flags.png")
    assert (
        _run(capsys, "reconstruct", files["plain"], str(tmp_path / "flags.npz"), "--out", out)[0]
        == 0
    )


@pytest.mark.parametrize("seed", [str(10**23), str(2**63), "-1"])
def test_a_seed_out_of_range_is_named(files, tmp_path, capsys, seed: str) -> None:
    reconstruct = ["reconstruct", files["plain"], files["data"], "--out", str(tmp_path / "r.png")]
    ood = ["ood", files["plain"], "--in", files["data"], "--reference", files["data"]]
    for argv in (reconstruct, ood):
        code, _, err = _run(capsys, *argv, "--seed", seed)
        assert code == 2
        assert err == f"glowlab {argv[0]}: error: --seed must be in [0, 2**63 - 1], got {seed}\n"


def test_16_bit_grayscale_files_are_scaled_to_8_bits(tmp_path: Path) -> None:
    from PIL import Image

    from glowlab.imageio import load_images

    wide = np.array([[0, 257, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(np.array([[0.5, 0.25]], dtype=np.float32)).save(tmp_path / "float.tiff")
    images = load_images(tmp_path / "wide.png").images
    assert images.flatten().tolist() == [0, 1, 156, 255]
    with pytest.raises(ValueError, match=r"float\.tiff: its pixels are floating-point"):
        load_images(tmp_path / "float.tiff")
