#!/bin/sh
# fact repro adamw: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact train mlp --dataset teacher-linear:d=4,c=3,n=30,noise=1,seed=0 --width 8 --depth 2 --activation tanh --optimizer adamw --lr 0.05 --weight-decay 0.5 --eps 0.01 --betas 0.9,0.99 --schedule constant --epochs 3000 --batch-size 30 --dtype float64 --seed 0 --out adamw/mlp_full-batch.pt --quiet --device cpu
fact analyze adamw/mlp_full-batch.pt --relations fact,fact_adamw --device cpu --format jsonl --report adamw/mlp_full-batch.h5 > adamw/mlp_full-batch.jsonl
fact plot adamw/mlp_full-batch.h5 --kind bars --relations fact,fact_adamw --dpi 100 --out adamw/bars_full-batch.png
fact train mlp --dataset teacher-linear:d=4,c=3,n=30,noise=1,seed=0 --width 8 --depth 2 --activation tanh --optimizer adamw --lr 0.05 --weight-decay 0.5 --eps 0.01 --betas 0.9,0.99 --schedule constant --epochs 500 --batch-size 5 --dtype float64 --seed 0 --out adamw/mlp_minibatch.pt --quiet --device cpu
fact analyze adamw/mlp_minibatch.pt --relations fact,fact_adamw --device cpu --format jsonl --report adamw/mlp_minibatch.h5 > adamw/mlp_minibatch.jsonl
fact plot adamw/mlp_minibatch.h5 --kind bars --relations fact,fact_adamw --dpi 100 --out adamw/bars_minibatch.png
