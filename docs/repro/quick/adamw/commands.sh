#!/bin/sh
# fact repro adamw: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact train linear --dataset teacher-linear:d=10,c=10,n=100,seed=0 --depth 1 --optimizer adamw --lr 0.01 --weight-decay 0.1 --schedule constant --epochs 3000 --batch-size 100 --dtype float64 --out adamw/linear_full-batch.pt --quiet --device cpu
fact analyze adamw/linear_full-batch.pt --relations fact,fact_adamw --device cpu --format jsonl --report adamw/linear_full-batch.h5 > adamw/linear_full-batch.jsonl
fact train linear --dataset teacher-linear:d=10,c=10,n=100,seed=0 --depth 1 --optimizer adamw --lr 0.01 --weight-decay 0.1 --schedule constant --epochs 3000 --batch-size 10 --dtype float64 --out adamw/linear_minibatch.pt --quiet --device cpu
fact analyze adamw/linear_minibatch.pt --relations fact,fact_adamw --device cpu --format jsonl --report adamw/linear_minibatch.h5 > adamw/linear_minibatch.jsonl
