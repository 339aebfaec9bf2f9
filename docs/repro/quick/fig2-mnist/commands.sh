#!/bin/sh
# fact repro fig2-mnist: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact train mlp --dataset mnist-10k --width 256 --depth 5 --activation relu --loss mse --optimizer sgd --lr 0.5 --momentum 0.9 --weight-decay 0.0001 --schedule cosine --epochs 200 --batch-size 128 --seed 0 --out fig2-mnist/mlp.pt --quiet --device cpu
fact analyze fig2-mnist/mlp.pt --relations fact,fact_sqrt,nfa,enfa --matrices all --device cpu --format jsonl --report fig2-mnist/mlp.h5 > fig2-mnist/mlp.jsonl
fact plot fig2-mnist/mlp.h5 --kind bars --relations fact,fact_sqrt,nfa,enfa --dpi 100 --out fig2-mnist/bars.png
