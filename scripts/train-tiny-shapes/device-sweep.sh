#!/usr/bin/env bash
# Development only: several training variants at once on a CUDA machine (the `device` tool), to choose the
# recipe that the CPU run (the shipped checkpoint) then uses. Needs .devcarry/ (wheels of transformers 4.54.1,
# tokenizers 0.21.4 and huggingface_hub 0.36.2, and the Idefics2 tokenizer), carried along.
set -u
python3 -m pip install -q --no-deps --target /tmp/pyx .devcarry/wheels/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/pyx IDEFICS2_TOKENIZER=$PWD/.devcarry/tokenizer TRAIN_DEVICE=cuda OMP_NUM_THREADS=2
python3 -c "import transformers, torch; print(transformers.__version__, torch.__version__, torch.cuda.get_device_name())"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
MIN=${MIN:-6.5}
run() { name=$1; shift; python3 scripts/train-tiny-shapes/train.py --out /tmp/ck/$name --eval-n 100 --no-samples --max-minutes "$MIN" "$@" >"$OUT/$name.log" 2>&1 & }
run a_aux1
run b_aux0 --set aux_weight=0
run c_nophase1 --set phase1_steps=0
run d_aux3 --set aux_weight=3
run e_lr1e3 --set lr=1e-3
run f_vis3 --arch vision.num_hidden_layers=3
run g_vis3_nophase1 --arch vision.num_hidden_layers=3 --set phase1_steps=0
wait
for f in "$OUT"/*.log; do echo "== $f"; grep -E "^stopped|^training time" "$f" | head -2; grep -E "^step" "$f" | tail -1 | cut -c1-200; grep -A7 "question kind" "$f"; done | tee "$OUT/summary.txt"
