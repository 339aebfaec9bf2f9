#!/bin/sh
# fact repro wd: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact train mlp --dataset mnist-10k:n=2000,n_test=500 --width 64 --depth 3 --lr 0.5 --momentum 0.9 --weight-decay 0.0001 --epochs 100 --seed 0 --out wd/mlp_wd0.0001.pt --quiet --device cpu
fact analyze wd/mlp_wd0.0001.pt --relations fact,nfa --device cpu --format jsonl --report wd/mlp_wd0.0001.h5 > wd/mlp_wd0.0001.jsonl
fact train mlp --dataset mnist-10k:n=2000,n_test=500 --width 64 --depth 3 --lr 0.5 --momentum 0.9 --weight-decay 0.001 --epochs 100 --seed 0 --out wd/mlp_wd0.001.pt --quiet --device cpu
fact analyze wd/mlp_wd0.001.pt --relations fact,nfa --device cpu --format jsonl --report wd/mlp_wd0.001.h5 > wd/mlp_wd0.001.jsonl
fact train mlp --dataset mnist-10k:n=2000,n_test=500 --width 64 --depth 3 --lr 0.5 --momentum 0.9 --weight-decay 0.01 --epochs 100 --seed 0 --out wd/mlp_wd0.01.pt --quiet --device cpu
fact analyze wd/mlp_wd0.01.pt --relations fact,nfa --device cpu --format jsonl --report wd/mlp_wd0.01.h5 > wd/mlp_wd0.01.jsonl
