"""The side-by-side harness (benchmarks/bench_peers.py and peers.py).

The other implementations are not part of glowlab, so these tests drive the harness with
stand-in checkouts written here: tiny models with the peers' interfaces (constructor
arguments, return values, input conventions, the in-place dequantization of one of them)
whose likelihood is known in closed form. They check that each adapter feeds its model
the right input and turns its output into bits/dim of the 8-bit data, that two checkouts
do not see each other's modules, and that every question runs. With real checkouts in
``.peers/`` (``rosinality/``, ``y0ast/``) one more test builds them.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_peers
import peers
from common import MODEL_CONFIGS

ROSINALITY = """
import math
import statistics
import torch
from torch import nn

MARK = "rosinality"


class Glow(nn.Module):
    def __init__(self, in_channel, n_flow, n_block, affine=True, conv_lu=True):
        super().__init__()
        self.shift = nn.Parameter(torch.full((), 0.25))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        z = x - self.shift
        log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        logdet = torch.full((x.shape[0],), 3.0, device=x.device)
        return log_p, logdet, [z[:, :2], z[:, 2:]]

    def reverse(self, z_list, reconstruct=False):
        return torch.cat(z_list, 1) + self.shift
"""

Y0AST_MODEL = """
import math
import statistics
import torch
from torch import nn
from modules import gaussian_sample
from utils import pixels_of

MARK = "y0ast"


class Glow(nn.Module):
    def __init__(self, image_shape, hidden_channels, K, L, actnorm_scale, flow_permutation,
                 flow_coupling, LU_decomposed, y_classes, learn_top, y_condition):
        super().__init__()
        self.image_shape = image_shape  # (H, W, C)
        self.shift = nn.Parameter(torch.full((), -0.125))
        self.seen = []

    def prior(self, data, y_onehot=None):
        n = 32 if data is None else data.shape[0]
        h, w, c = self.image_shape
        mean = torch.zeros(n, c, h, w, device=self.shift.device)
        return mean, torch.zeros_like(mean)

    def forward(self, x=None, y_onehot=None, z=None, temperature=None, reverse=False):
        if reverse:
            if z is None:
                mean, logs = self.prior(None)
                z = gaussian_sample(mean, logs, temperature)
            return z + self.shift
        self.seen.append(x.detach().clone())
        x += torch.rand_like(x) / 256  # in place, as the real one does
        d = pixels_of(x)
        z = x - self.shift
        log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        return z, -(log_p - d * math.log(256)) / (d * math.log(2)), None
"""

Y0AST_MODULES = """
import torch


def gaussian_sample(mean, logs, temperature=1):
    return torch.normal(mean, torch.exp(logs) * temperature)
"""

Y0AST_UTILS = """
def pixels_of(x):
    return x[0].numel()
"""


@pytest.fixture(autouse=True)
def _float32() -> None:
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores float64 afterwards


@pytest.fixture
def checkouts(tmp_path: Path) -> dict[str, Path]:
    folders = {"rosinality": tmp_path / "rosinality", "y0ast": tmp_path / "y0ast"}
    files = {
        "rosinality": {"model.py": ROSINALITY},
        "y0ast": {"model.py": Y0AST_MODEL, "modules.py": Y0AST_MODULES, "utils.py": Y0AST_UTILS},
    }
    for kind, folder in folders.items():
        folder.mkdir()
        for name, text in files[kind].items():
            (folder / name).write_text(textwrap.dedent(text))
    return folders


def _config(name: str = "glow-mnist", **overrides) -> dict:
    return {**MODEL_CONFIGS[name], **overrides}


def _pixels(n: int = 3, shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8)


def _normal_bits(z: torch.Tensor, extra: float = 0.0) -> torch.Tensor:
    """Bits/dim of 8-bit data whose dequantized value has log-density N(z; 0, 1) + extra."""
    d = z[0].numel()
    log_p = (-0.5 * z.double() ** 2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) + extra
    return -(log_p - d * math.log(256)) / (d * math.log(2))


def test_rosinality_gets_dequantized_images_and_its_likelihood_becomes_bits_per_dim(
    checkouts: dict[str, Path],
) -> None:
    contender = peers.RosinalityContender(_config(), torch.device("cpu"), checkouts["rosinality"])
    pixels = _pixels()
    bits = contender.bits_per_dim(pixels)
    (x,) = contender.model.seen
    low = pixels.double() / 256 - 0.5
    assert torch.all(x >= low) and torch.all(x < low + 1 / 256)  # noise inside each bin
    assert not torch.equal(x.double(), low)
    expected = _normal_bits(x - 0.25, extra=3.0)  # log p + logdet, less the bins' width
    torch.testing.assert_close(bits.double(), expected, rtol=1e-6, atol=0)


def test_rosinality_samples_from_the_shapes_of_its_latents(checkouts: dict[str, Path]) -> None:
    contender = peers.RosinalityContender(_config(), torch.device("cpu"), checkouts["rosinality"])
    with pytest.raises(RuntimeError, match="initialize"):
        contender.sample(4, 0.7)
    contender.initialize(_pixels(2))
    torch.manual_seed(1)
    samples = contender.sample(4000, 0.5)
    assert samples.shape == (4000, 1, 28, 28)
    assert abs(float(samples.std()) - 0.5) < 0.01 and abs(float(samples.mean()) - 0.25) < 0.01


def test_rosinality_refuses_what_it_cannot_build(checkouts: dict[str, Path]) -> None:
    with pytest.raises(peers.Unsupported, match="512 channels"):
        peers.RosinalityContender(
            _config("small-mnist"), torch.device("cpu"), checkouts["rosinality"]
        )
    with pytest.raises(peers.Unsupported, match="affine"):
        peers.RosinalityContender(
            _config(coupling="additive"), torch.device("cpu"), checkouts["rosinality"]
        )


def test_y0ast_gets_unnoised_images_and_returns_bits_per_dim(checkouts: dict[str, Path]) -> None:
    contender = peers.Y0astContender(_config(), torch.device("cpu"), checkouts["y0ast"])
    pixels = _pixels()
    bits = contender.bits_per_dim(pixels)
    (x,) = contender.model.seen
    torch.testing.assert_close(x, pixels.float() / 256 - 0.5, rtol=0, atol=0)
    assert bits.shape == (3,) and torch.all(bits > 0)


def test_y0ast_samples_32_its_own_way_and_other_counts_from_its_prior(
    checkouts: dict[str, Path],
) -> None:
    contender = peers.Y0astContender(_config(), torch.device("cpu"), checkouts["y0ast"])
    assert contender.sample(32, 0.7).shape == (32, 1, 28, 28)
    torch.manual_seed(2)
    samples = contender.sample(3000, 0.5)
    assert samples.shape == (3000, 1, 28, 28)
    assert abs(float(samples.std()) - 0.5) < 0.01 and abs(float(samples.mean()) + 0.125) < 0.01


def test_recipes_learning_rates() -> None:
    y0ast = peers.Y0astContender.learning_rate
    assert y0ast(None, 1.0, 0, 64, 50_000) == pytest.approx(0.2)  # type: ignore[arg-type]
    assert y0ast(None, 1.0, 50_000 // 64, 64, 50_000) == pytest.approx(0.2)  # type: ignore[arg-type]
    assert y0ast(None, 1.0, 50_000 // 64 + 1, 64, 50_000) == pytest.approx(0.4)  # type: ignore[arg-type]
    assert y0ast(None, 1.0, 10**6, 64, 50_000) == 1.0  # type: ignore[arg-type]
    glowlab = types.SimpleNamespace(warmup_steps=10)
    rate = peers.GlowlabContender.learning_rate
    assert rate(glowlab, 2.0, 0, 64, 50_000) == pytest.approx(0.2)  # type: ignore[arg-type]
    assert rate(glowlab, 2.0, 9, 64, 50_000) == 2.0  # type: ignore[arg-type]


def test_two_checkouts_do_not_see_each_others_modules(checkouts: dict[str, Path]) -> None:
    sentinel = types.ModuleType("utils")
    sys.modules["utils"] = sentinel
    try:
        device = torch.device("cpu")
        first = peers.RosinalityContender(_config(), device, checkouts["rosinality"])
        second = peers.Y0astContender(_config(), device, checkouts["y0ast"])
        assert sys.modules["utils"] is sentinel
        assert "model" not in sys.modules and "modules" not in sys.modules
    finally:
        del sys.modules["utils"]
    assert type(first.model).__init__.__globals__["MARK"] == "rosinality"
    assert type(second.model).__init__.__globals__["MARK"] == "y0ast"
    assert str(checkouts["y0ast"].resolve()) not in sys.path


def test_checkout_source_reads_source_txt(checkouts: dict[str, Path]) -> None:
    folder = checkouts["y0ast"]
    assert peers.checkout_source(folder) == str(folder)  # not a git checkout, no SOURCE.txt
    (folder / "SOURCE.txt").write_text("repo: y0ast/Glow-PyTorch\nmodel.py abc123\n")
    assert peers.checkout_source(folder) == "repo: y0ast/Glow-PyTorch model.py abc123"


def _run(tmp_path: Path, checkouts: dict[str, Path], *args: str) -> dict:
    out = tmp_path / "peers.json"
    bench_peers.main([
        "--device", "cpu", "--json", str(out),
        "--peer", f"rosinality={checkouts['rosinality']}", "--peer", f"y0ast={checkouts['y0ast']}",
        *args,
    ])  # fmt: skip
    return json.loads(out.read_text())


def test_train_memory_and_sample_side_by_side(tmp_path: Path, checkouts: dict[str, Path]) -> None:
    result = _run(
        tmp_path, checkouts, "--model", "glow-mnist", "--steps", "1", "--batch-sizes", "2",
        "--warmup", "0", "--repeats", "1", "--rounds", "2", "--n", "2",
    )  # fmt: skip
    train, memory, sample = (result["results"][q] for q in ("train", "memory", "sample"))
    assert [r["implementation"] for r in train] == ["glowlab", "rosinality", "y0ast"]
    assert all(r["images_per_s"] > 0 and len(r["rounds_ms"]) == 2 for r in train)
    assert [(r["implementation"], r["memory_mode"]) for r in memory] == [
        ("glowlab", "standard"), ("glowlab", "invertible"), ("rosinality", "-"), ("y0ast", "-"),
    ]  # fmt: skip
    saved = {r["memory_mode"]: r["saved_activations_MiB"] for r in memory[:2]}
    assert saved["invertible"] < saved["standard"]
    for row in sample:  # the median of two interleaved rounds, each a median of its calls
        assert len(row["rounds_ms"]) == 2 and row["ms"] == statistics.median(row["rounds_ms"])
        assert row["min_round_ms"] == min(row["rounds_ms"]) > 0
    assert result["model_config"]["steps"] == 1
    assert set(result["implementations"]) == {"glowlab", "rosinality", "y0ast"}


def test_targets_reads_the_side_by_side_file(tmp_path: Path, checkouts: dict[str, Path]) -> None:
    import targets

    result = _run(
        tmp_path, checkouts, "--model", "glow-mnist", "--steps", "1", "--batch-sizes", "2",
        "--warmup", "0", "--repeats", "1", "--rounds", "1", "--n", "32", "--questions",
        "train,sample",
    )  # fmt: skip
    found = targets.read_folder(tmp_path)
    assert targets.table(found)[1]["glowlab"] == "not measured"  # glow-mnist with K=1 only
    rows = {row[""]: row for row in targets.table(found, any_model=True)}
    best = rows["training images/s, best batch size (glow-cifar10)"]
    sample = rows["32 samples at temperature 0.7 (glow-cifar10)"]
    for who in ("glowlab", "rosinality", "y0ast"):
        train_row = next(r for r in result["results"]["train"] if r["implementation"] == who)
        assert best[who].startswith(f"{train_row['images_per_s']:,.0f} images/s (")
        assert sample[who].endswith("peers.json)") and " ms (" in sample[who]
    assert rows["training images/s, batch 64 (glow-cifar10)"]["glowlab"] == "not measured"


def test_glowlab_trains_in_bf16_in_the_recomputing_memory_modes(
    tmp_path: Path, checkouts: dict[str, Path]
) -> None:
    result = _run(
        tmp_path, checkouts, "--model", "glow-mnist", "--steps", "1", "--batch-sizes", "2",
        "--warmup", "0", "--repeats", "1", "--questions", "train", "--implementations",
        "glowlab", "--precision", "bf16", "--memory-mode", "checkpoint",
    )  # fmt: skip
    assert result["results"]["train"][0]["images_per_s"] > 0


def test_a_peer_that_cannot_build_the_model_gets_a_row_saying_why(
    tmp_path: Path, checkouts: dict[str, Path]
) -> None:
    result = _run(
        tmp_path, checkouts, "--model", "small-mnist", "--steps", "1", "--batch-sizes", "2",
        "--warmup", "0", "--repeats", "1", "--questions", "train",
    )  # fmt: skip
    rows = {r["implementation"]: r for r in result["results"]["train"]}
    assert rows["rosinality"]["note"].startswith("unavailable: its coupling networks are 512")
    assert rows["glowlab"]["images_per_s"] > 0 and rows["y0ast"]["images_per_s"] > 0


def test_learning_side_by_side(
    tmp_path: Path, checkouts: dict[str, Path], shared_data: Path
) -> None:
    result = _run(
        tmp_path, checkouts, "--model", "glow-mnist", "--steps", "1", "--questions", "learning",
        "--dataset", "mnist", "--data-dir", str(shared_data), "--seconds", "0.2",
        "--learning-batch", "4", "--sync-every", "2", "--test-limit", "20", "--eval-batch", "10",
    )  # fmt: skip
    rows = result["results"]["learning"]
    assert [r["implementation"] for r in rows] == ["glowlab", "rosinality", "y0ast"]
    for row in rows:
        assert row["steps"] >= 2 and row["steps"] % 2 == 0 and row["train_seconds"] >= 0.2
        assert row["test_images"] == 20 and 0 < row["test_bpd"] < 16


def test_learning_fills_a_tensor_learning_rate_with_the_schedule(
    tmp_path: Path,
    checkouts: dict[str, Path],
    shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --cuda-graphs glowlab's optimizer reads its rate from a tensor: the loop must
    fill that tensor, not replace it (checked here on the CPU with a tensor rate)."""
    made = []

    def optimizer(self: peers.GlowlabContender) -> torch.optim.Optimizer:
        made.append(peers.Adamax(self.model.parameters(), lr=torch.tensor(1e-3)))
        return made[-1]

    monkeypatch.setattr(peers.GlowlabContender, "optimizer", optimizer)
    result = _run(
        tmp_path, checkouts, "--model", "glow-mnist", "--steps", "1", "--questions", "learning",
        "--dataset", "mnist", "--data-dir", str(shared_data), "--seconds", "0.2",
        "--learning-batch", "4", "--sync-every", "2", "--test-limit", "10", "--eval-batch", "10",
        "--warmup-steps", "1000", "--implementations", "glowlab",
    )  # fmt: skip
    steps = result["results"]["learning"][0]["steps"]
    lr = made[0].param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor)  # still the tensor, filled in place
    assert float(lr) == pytest.approx(1e-3 * steps / 1000)  # the last step's rate


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_glowlab_graphed_beside_the_peers_on_cuda(
    tmp_path: Path, checkouts: dict[str, Path]
) -> None:
    out = tmp_path / "peers.json"
    bench_peers.main([
        "--device", "cuda", "--json", str(out), "--peer", f"y0ast={checkouts['y0ast']}",
        "--model", "glow-mnist", "--steps", "1", "--batch-sizes", "4", "--warmup", "1",
        "--repeats", "2", "--rounds", "1", "--n", "4", "--cuda-graphs",
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert all(r["ms"] > 0 for q in ("train", "sample") for r in result["results"][q])
    assert "CUDA graphs" in result["implementations"]["glowlab"]["recipe"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--peer", "nope=x"], "KIND=PATH"),
        (["--peer", "rosinality=/no/such/folder"], "no model.py"),
        (["--questions", "speed"], "unknown question"),
        (["--implementations", "y0ast"], "not glowlab or a --peer kind"),
        (["--cuda-graphs"], "needs a CUDA device"),
        (
            ["--questions", "learning", "--model", "glow-cifar10", "--dataset", "mnist"],
            "expects images (3, 32, 32), mnist has (1, 28, 28)",
        ),
    ],
)
def test_bad_options_exit_with_code_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_peers.main(["--device", "cpu", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_implementations_chooses_whom_to_measure(
    tmp_path: Path, checkouts: dict[str, Path]
) -> None:
    result = _run(
        tmp_path, checkouts, "--model", "glow-mnist", "--steps", "1", "--questions", "sample",
        "--n", "2", "--warmup", "0", "--repeats", "1", "--implementations", "y0ast,rosinality",
    )  # fmt: skip
    assert [r["implementation"] for r in result["results"]["sample"]] == ["rosinality", "y0ast"]


def test_the_same_peer_twice_exits_with_code_2(checkouts: dict[str, Path]) -> None:
    peer = f"y0ast={checkouts['y0ast']}"
    with pytest.raises(SystemExit) as exit_info:
        bench_peers.main(["--device", "cpu", "--peer", peer, "--peer", peer])
    assert exit_info.value.code == 2


REAL = ROOT / ".peers"


@pytest.mark.skipif(not (REAL / "y0ast" / "model.py").exists(), reason="no checkouts in .peers/")
@pytest.mark.filterwarnings("ignore")
def test_real_checkouts_build_score_and_sample() -> None:
    """With the real implementations: finite bits/dim near glowlab's at init, right sample shape."""
    config = _config(steps=1)
    device = torch.device("cpu")
    pixels = _pixels(8)
    for kind, cls in peers.PEER_KINDS.items():
        if not (REAL / kind / "model.py").exists():
            continue
        contender = cls(config, device, REAL / kind)
        contender.initialize(pixels)
        bits = contender.bits_per_dim(pixels)
        assert torch.isfinite(bits).all() and torch.all((bits > 1) & (bits < 16))
        contender.model.eval()
        assert contender.sample(32, 0.7).shape == (32, 1, 28, 28)
