#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, in phases that each fit in a few minutes.
#
# Usage: bash benchmarks/gpu_round.sh PHASE OUT_DIR [DATA_DIR]
#   PHASE: tests | train | memory-sample | learning-cifar10 | learning-mnist
#          | peers | peers-learning-cifar10 | peers-learning-mnist
#   OUT_DIR: JSON results and a log per phase go here
#   DATA_DIR: folder with mnist/ and cifar10/ .npz files (the learning phases only)
#
# Runs from a source checkout with no install: PYTHONPATH points at src/. Needs torch with
# CUDA and numpy; the tests phase also needs pytest, hypothesis and pytest-xdist. The peers
# phases run rosinality/glow-pytorch and y0ast/Glow-PyTorch side by side with glowlab
# (benchmarks/bench_peers.py) from checkouts in $PEERS (default: .peers/ in the repository:
# rosinality/ and y0ast/); rosinality's model needs scipy. Their learning phases train the
# two peers only (about 7 minutes); glowlab's figure is learning-*'s.
# Afterwards, python3 benchmarks/targets.py OUT_DIR prints the targets' table from OUT_DIR.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '4,9p' "$0" >&2
    exit 2
fi
phase=$1
out=$2
data=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$out/$phase.log"

run() {
    echo "+ $*" | tee -a "$log"
    python3 "$root/benchmarks/$@" 2>&1 | tee -a "$log"
}

peers=${PEERS:-$root/.peers}
peer_args=(--peer "rosinality=$peers/rosinality" --peer "y0ast=$peers/y0ast")

need_data() {
    if [[ -z $data || ! -d $data ]]; then
        echo "phase $phase needs DATA_DIR with mnist/ and cifar10/" >&2
        exit 2
    fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$log" || true
case $phase in
tests)
    # The whole suite, with the CUDA tests that the CPU skips (no host sync in a step, ...).
    (cd "$root" && python3 -m pytest -q -n 8 -p no:cacheprovider tests 2>&1 | tee -a "$log")
    ;;
train)
    run bench_train.py --device cuda --model glow-cifar10 --batch-sizes 64,256 \
        --precisions fp32,tf32,bf16 --memory-modes standard --json "$out/train.json"
    # The same without the batched folded weights: what the fewer launches are worth here.
    run bench_train.py --device cuda --model glow-cifar10 --batch-sizes 64,256 \
        --precisions tf32 --memory-modes standard --no-batch-folds --json "$out/train-per-pair.json"
    run bench_train.py --device cuda --model glow-cifar10 --batch-sizes 64,256,512 \
        --precisions tf32,bf16 --memory-modes standard --channels-last --compile \
        --json "$out/train-nhwc-compiled.json"
    run bench_train.py --device cuda --model glow-cifar10 --batch-sizes 64,256 \
        --precisions tf32,bf16 --memory-modes standard,invertible --channels-last \
        --cuda-graphs --json "$out/train-nhwc-graphed.json"
    ;;
memory-sample)
    run bench_memory.py --device cuda --model glow-cifar10 --batch-sizes 256 --precision bf16 \
        --channels-last --repeats 5 --json "$out/memory.json"
    run bench_sample.py --device cuda --model glow-cifar10 --precision tf32 --repeats 50 \
        --json "$out/sample-tf32.json"
    run bench_sample.py --device cuda --model glow-cifar10 --precision bf16 --repeats 50 \
        --json "$out/sample-bf16.json"
    run bench_sample.py --device cuda --model glow-cifar10 --precision bf16 --compile \
        --repeats 50 --json "$out/sample-bf16-compiled.json"
    run bench_sample.py --device cuda --model glow-cifar10 --precision bf16 --cuda-graphs \
        --repeats 50 --json "$out/sample-bf16-graphed.json"
    run bench_optim.py --device cuda --model glow-cifar10 --json "$out/optim.json"
    ;;
learning-cifar10)
    need_data
    run bench_learning.py --device cuda --dataset cifar10 --data-dir "$data" \
        --model glow-cifar10 --seconds 200 --batch-size 64 --precision bf16 --channels-last \
        --json "$out/learning-cifar10.json"
    ;;
learning-mnist)
    need_data
    run bench_learning.py --device cuda --dataset mnist --data-dir "$data" \
        --model glow-mnist --seconds 200 --batch-size 64 --precision bf16 --channels-last \
        --json "$out/learning-mnist.json"
    ;;
peers)
    run bench_peers.py --device cuda --model glow-cifar10 "${peer_args[@]}" \
        --questions train,memory,sample --batch-sizes 64,256 --json "$out/peers.json"
    run bench_peers.py --device cuda --model glow-cifar10 "${peer_args[@]}" \
        --implementations glowlab --precision bf16 --channels-last --cuda-graphs \
        --questions train,sample --batch-sizes 64,256 --json "$out/peers-glowlab-graphed.json"
    ;;
peers-learning-cifar10 | peers-learning-mnist)
    need_data
    dataset=${phase#peers-learning-}
    model=$([[ $dataset == mnist ]] && echo glow-mnist || echo glow-cifar10)
    run bench_peers.py --device cuda --model "$model" "${peer_args[@]}" \
        --implementations rosinality,y0ast --questions learning --dataset "$dataset" \
        --data-dir "$data" --seconds 200 --learning-batch 64 --json "$out/$phase.json"
    ;;
*)
    echo "unknown phase '$phase'; choose tests, train, memory-sample, learning-cifar10," \
        "learning-mnist, peers, peers-learning-cifar10 or peers-learning-mnist" >&2
    exit 2
    ;;
esac
