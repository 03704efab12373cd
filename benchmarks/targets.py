"""The GPU targets' table, from the JSON files that the benchmark scripts write.

Reads every ``*.json`` in a folder (``gpu_round.sh`` writes one folder per run) and prints
one row per target of docs/benchmarks.md: glowlab's best measured figure and the settings
that gave it, the peers' figures from the side-by-side run (``bench_peers.py``), the target,
and whether glowlab meets it. A figure that no file holds is "not measured". Each figure
names the file it comes from, and the files' hardware is listed under the table, so that a
CPU run (the scripts run there too) is never read as a GPU figure. Only figures of the
target's model count (``--model glow-cifar10``, or ``glow-mnist`` for the MNIST row, at
full depth); ``--any-model`` counts every model and names it in each cell.

Which script wrote a file is told by its contents, not its name:

* training images/s: ``bench_train.py`` rows in the standard memory mode, and glowlab's
  rows of ``bench_peers.py``'s train question;
* peak memory at batch 256 in a memory-saving mode: ``bench_memory.py`` rows on CUDA; the
  step-time ratio is to the fastest training step at batch 256 in any file, eager,
  compiled or graphed;
* sampling latency: ``bench_sample.py`` rows and glowlab's rows of the sample question, for
  32 samples at temperature 0.7;
* bits/dim after 200 s: ``bench_learning.py`` rows and the learning question's rows.

Example:
    bash benchmarks/gpu_round.sh train out/ && bash benchmarks/gpu_round.sh peers out/
    python benchmarks/targets.py out/ --json out/targets.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

PEERS = ("rosinality", "y0ast")
RATIO_LIMIT = 1.4  # a memory-saving step's time over the fastest step's


@dataclass
class Figure:
    """One measured value, where it came from and how it was measured."""

    value: float
    settings: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "?"  # the file
    model: str = "?"  # the benchmark config it was measured on (``--model``)


@dataclass
class Measurements:
    """Every figure of a folder, by what it measures; glowlab's and the peers' apart."""

    train: list[tuple[int, Figure]] = field(default_factory=list)  # (batch, images/s)
    step_ms: list[tuple[int, Figure]] = field(default_factory=list)  # (batch, ms)
    memory: list[tuple[int, str, Figure]] = field(default_factory=list)  # (batch, mode, GiB)
    sample: list[tuple[int, float, Figure]] = field(default_factory=list)  # (n, T, ms)
    learning: list[tuple[str, Figure]] = field(default_factory=list)  # (dataset, bits/dim)
    peers: dict[str, Measurements] = field(default_factory=dict)
    hardware: dict[str, str] = field(default_factory=dict)  # file name -> hardware line

    def only(self, model: str) -> Measurements:
        """The figures measured on ``model``."""

        def keep(rows: list[Any]) -> list[Any]:
            return [row for row in rows if row[-1].model == model]

        peers = {name: peer.only(model) for name, peer in self.peers.items()}
        return Measurements(
            keep(self.train), keep(self.step_ms), keep(self.memory), keep(self.sample),
            keep(self.learning), peers, self.hardware,
        )  # fmt: skip


def _speed(data: dict[str, Any]) -> list[str]:
    """The speed settings a file records, as words."""
    words = []
    if data.get("channels_last"):
        words.append("channels-last")
    if data.get("compiled"):
        words.append("compiled")
    if data.get("cuda_graphs"):
        words.append("CUDA graphs")
    if data.get("batch_folds") is False:
        words.append("per-pair folds")
    return words


def _settings(*words: Any) -> str:
    return ", ".join(str(w) for w in words if w)


def read_folder(folder: Path) -> Measurements:
    """The figures of every benchmark JSON file in ``folder``."""
    found = Measurements()
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or "environment" not in data or "results" not in data:
            continue  # not a benchmark file (this script's own output, say)
        found.hardware[path.name] = data["environment"].get("hardware", "?")
        args = data.get("args") or {}
        model = str(args.get("model", "?"))
        if args.get("steps") is not None:  # bench_peers --steps K shortens every model
            model += f" (K={args['steps']})"
        read = _read_side_by_side if isinstance(data["results"], dict) else _read_glowlab
        read(found, partial(Figure, source=path.name, model=model), data)
    return found


def _read_glowlab(
    found: Measurements, figure_of: Callable[..., Figure], data: dict[str, Any]
) -> None:
    speed = _speed(data)
    for row in data["results"]:
        precision = row.get("precision")
        if "images_per_s" in row and "memory_mode" in row and "gflop_per_step" in row:
            mode = row["memory_mode"]
            settings = _settings(precision, mode if mode != "standard" else "", *speed)
            found.step_ms.append((row["batch"], figure_of(row["step_ms"], settings)))
            if mode == "standard":
                found.train.append((row["batch"], figure_of(row["images_per_s"], settings)))
        elif "peak_allocated_GiB" in row:
            settings = _settings(precision, row["memory_mode"], *speed)
            timed = {"step_ms": row["step_ms"]} if "step_ms" in row else {}  # --repeats 0
            figure = figure_of(row["peak_allocated_GiB"], settings, timed)
            found.memory.append((row["batch"], row["memory_mode"], figure))
        elif "median_ms" in row:
            figure = figure_of(row["median_ms"], _settings(precision, *speed))
            found.sample.append((row["n"], row["temperature"], figure))
        elif "test_bpd" in row:
            settings = _settings(precision, f"batch {row['batch']}", *speed)
            figure = figure_of(row["test_bpd"], settings, {"seconds": row["train_seconds"]})
            found.learning.append((row["dataset"], figure))


def _read_side_by_side(
    found: Measurements, figure_of: Callable[..., Figure], data: dict[str, Any]
) -> None:
    speed = _speed(data)
    for question, rows in data["results"].items():
        for row in rows:
            if "note" in row and not any(k in row for k in ("ms", "peak_allocated_GiB")):
                continue  # the implementation could not run this setting
            who = row["implementation"]
            into = found if who == "glowlab" else found.peers.setdefault(who, Measurements())
            settings = _settings(*speed) if who == "glowlab" else "its own recipe"
            if question == "train" and "ms" in row:
                into.train.append((row["batch"], figure_of(row["images_per_s"], settings)))
                into.step_ms.append((row["batch"], figure_of(row["ms"], settings)))
            elif question == "memory" and "peak_allocated_GiB" in row:
                mode = row.get("memory_mode", "-")
                into.memory.append((row["batch"], mode, figure_of(row["peak_allocated_GiB"])))
            elif question == "sample" and "ms" in row:
                into.sample.append((row["n"], row["temperature"], figure_of(row["ms"], settings)))
            elif question == "learning" and "test_bpd" in row:
                extra = {"seconds": row["train_seconds"]}
                into.learning.append((row["dataset"], figure_of(row["test_bpd"], settings, extra)))


# -- the rows ----------------------------------------------------------------------------------
def _best(figures: Iterator[Figure], largest: bool) -> Figure | None:
    finite = [f for f in figures if math.isfinite(f.value)]
    if not finite:
        return None
    return (max if largest else min)(finite, key=lambda f: f.value)


def train_at(m: Measurements, batch: int | None) -> Figure | None:
    """The most images/s at ``batch`` (any batch for ``None``), standard memory mode."""
    return _best((f for b, f in m.train if batch is None or b == batch), largest=True)


def fastest_step(m: Measurements, batch: int) -> Figure | None:
    return _best((f for b, f in m.step_ms if b == batch), largest=False)


def memory_saving(m: Measurements, batch: int = 256) -> Figure | None:
    """The lowest peak memory at ``batch`` in a memory-saving mode within the step-time
    limit; failing that, the lowest peak, with its ratio."""
    fastest = fastest_step(m, batch)
    rows = [f for b, mode, f in m.memory if b == batch and mode in ("invertible", "checkpoint")]
    for f in rows:
        if fastest is not None and "step_ms" in f.extra:
            f.extra["ratio"] = f.extra["step_ms"] / fastest.value
    within = [f for f in rows if f.extra.get("ratio", math.inf) <= RATIO_LIMIT]
    return _best(iter(within or rows), largest=False)


def peer_memory(m: Measurements, batch: int = 256) -> Figure | None:
    return _best((f for b, _, f in m.memory if b == batch), largest=False)


def sample_latency(m: Measurements, n: int = 32, temperature: float = 0.7) -> Figure | None:
    return _best(
        (f for k, t, f in m.sample if k == n and math.isclose(t, temperature)), largest=False
    )


def learning(m: Measurements, dataset: str) -> Figure | None:
    return _best((f for d, f in m.learning if d == dataset), largest=False)


@dataclass
class Target:
    what: str
    model: str  # the benchmark config the target is set for
    goal: str
    figure: Callable[[Measurements], Figure | None]
    peer_figure: Callable[[Measurements], Figure | None]
    met: Callable[[Figure], bool | None]  # None: a part of the target was not measured
    unit: str


def _memory_met(f: Figure) -> bool | None:
    if "ratio" not in f.extra:
        return None  # the step time was not measured with it
    return f.value <= 4 and f.extra["ratio"] <= RATIO_LIMIT


CIFAR, MNIST = "glow-cifar10", "glow-mnist"
TARGETS = [
    Target("training images/s, batch 64", CIFAR, ">= 2,500", lambda m: train_at(m, 64),
           lambda m: train_at(m, 64), lambda f: f.value >= 2500, "images/s"),
    Target("training images/s, best batch size", CIFAR, ">= 8,000",
           lambda m: train_at(m, None), lambda m: train_at(m, None),
           lambda f: f.value >= 8000, "images/s"),
    Target("peak memory, batch 256, memory-saving mode", CIFAR,
           "<= 4 GiB at <= 1.4x the fastest step", memory_saving, peer_memory, _memory_met,
           "GiB"),
    Target("32 samples at temperature 0.7", CIFAR, "<= 15 ms", sample_latency, sample_latency,
           lambda f: f.value <= 15, "ms"),
    Target("CIFAR-10 test bits/dim after 200 s", CIFAR, "<= 3.65",
           lambda m: learning(m, "cifar10"), lambda m: learning(m, "cifar10"),
           lambda f: f.value <= 3.65, "bits/dim"),
    Target("MNIST test bits/dim after 200 s", MNIST, "<= 1.10", lambda m: learning(m, "mnist"),
           lambda m: learning(m, "mnist"), lambda f: f.value <= 1.10, "bits/dim"),
]  # fmt: skip


def _cell(figure: Figure | None, unit: str, with_settings: bool, name_model: bool) -> str:
    if figure is None:
        return "not measured"
    value = f"{figure.value:,.0f}" if unit == "images/s" else f"{figure.value:.3g}"
    notes = [figure.model] if name_model else []
    notes += [figure.settings] if with_settings and figure.settings else []
    if "ratio" in figure.extra:
        notes.append(f"{figure.extra['ratio']:.2f}x the fastest step")
    if "seconds" in figure.extra:
        notes.append(f"{figure.extra['seconds']:.0f} s")
    notes.append(figure.source)
    return f"{value} {unit} ({'; '.join(notes)})"


def table(measured: Measurements, any_model: bool = False) -> list[dict[str, str]]:
    """One row per target: glowlab, each peer, the target and whether glowlab meets it.

    Only figures of the target's model count, unless ``any_model`` (each cell then names
    its model, and "met" compares figures of other models with the target).
    """
    rows = []
    for target in TARGETS:
        m = measured if any_model else measured.only(target.model)
        ours = target.figure(m)
        row = {"": f"{target.what} ({target.model})"}
        for peer in PEERS:
            theirs = m.peers.get(peer)
            figure = target.peer_figure(theirs) if theirs else None
            row[peer] = _cell(figure, target.unit, False, any_model)
        row["glowlab"] = _cell(ours, target.unit, True, any_model)
        row["target"] = target.goal
        met = None if ours is None else target.met(ours)
        row["met"] = {True: "yes", False: "no", None: "not measured"}[met]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder of the benchmarks' JSON files")
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    parser.add_argument(
        "--any-model",
        action="store_true",
        help="count figures of every model, not only the targets' (glow-cifar10, glow-mnist); "
        "each cell then names its model",
    )
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    measured = read_folder(args.folder)
    if not measured.hardware:
        parser.error(f"{args.folder} holds no benchmark JSON files")
    rows = table(measured, args.any_model)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row[c] for c in columns) + " |")
    print()
    for name, hardware in measured.hardware.items():
        print(f"{name}: {hardware}")
    if args.json is not None:
        payload = {"rows": rows, "hardware": measured.hardware}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
