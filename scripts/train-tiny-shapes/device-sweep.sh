#!/usr/bin/env bash
# Development only: does the count improve with more training than the CPU hour allows? One variant of the recipe
# trains on one CUDA GPU (the `device` tool) for MIN minutes (the learning rate decays over that time,
# `--time-budget`), with its data drawn by worker processes (`data_workers`, seeded by step). The shipped
# checkpoint is still the CPU run of train.py; these runs only tell where more compute would get.
# Session 18 (H200): the loop is bound by Python and kernel launches. One run alone (128 scenes a step) drew
# 181 scenes a second, 8x the CPU run; three side by side only about 125 each, so that in 7 minutes each saw
# fewer scenes than the CPU run's 64 000. So this runs one variant: `NAME=x MIN=9 device-sweep.sh [--set K=V ...]`.
#
# Needs, carried along (ignored by git, named in the tool's `carry`):
#   .devcarry/pyx.tar.xz  transformers 4.54.1, tokenizers 0.21.4, huggingface_hub 0.36.2, safetensors, installed
#                         here with `pip install --no-deps --target pyx` for the device's Python 3.12, then tarred
#   .devcarry/tokenizer   a copy of ../shared/reference/idefics2-tokenizer
# The run's log and `NAME.tar` (config.json and model.safetensors, bf16) come back under $OUT; evaluate them here
# with `train.py --eval-only DIR` after copying the tokenizer and processor files of assets/idefics2-tiny-shapes.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
MIN=${MIN:-7}
mkdir -p /tmp/py && tar xJf .devcarry/pyx.tar.xz -C /tmp/py
export PYTHONPATH=/tmp/py/pyx IDEFICS2_TOKENIZER=$PWD/.devcarry/tokenizer TRAIN_DEVICE=cuda OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
python3 -c "import transformers, torch; print(transformers.__version__, torch.__version__, torch.cuda.get_device_name())" || exit 1
nproc
# 8x the CPU run's batch, the first phases shortened to about as many scenes as the CPU run's; max_pad=1000 pads
# all of a step's images into one encoder call (the padding is masked: step 25 of the default run logs the same
# loss, 20.3394, on the CPU, where it is 2x slower), so that the GPU is not waiting on Python.
BIG="--set scenes_per_batch=128 --set lr=1e-3 --set phase1_steps=100 --set curriculum_steps=200 --set data_workers=14 --set max_pad=1000"
name=${NAME:-run}
# Extra train.py arguments (a variant of the recipe) come from the command line.
python3 scripts/train-tiny-shapes/train.py --out "/tmp/ck/$name" --eval-n 1 --no-samples --steps 100000 \
    --time-budget "$MIN" $BIG "$@" >"$OUT/$name.log" 2>&1
tar cf "$OUT/$name.tar" -C "/tmp/ck/$name" config.json model.safetensors
grep -E "^parameters|^stopped|^training time|Traceback|Error" "$OUT/$name.log" | head -5
grep -E "^step" "$OUT/$name.log" | awk 'NR % 10 == 0' | cut -c1-230
grep -E "^step" "$OUT/$name.log" | tail -1 | cut -c1-230
