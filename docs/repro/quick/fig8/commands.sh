#!/bin/sh
# fact repro fig8: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact train mlp --dataset mnist-10k:n=2000,n_test=500 --width 256 --depth 5 --activation relu --loss mse --optimizer sgd --lr 0.5 --momentum 0.9 --weight-decay 0.0001 --schedule cosine --epochs 100 --batch-size 128 --seed 0 --save-every 10 --out fig8/mlp.pt --quiet --device cpu
fact analyze fig8/mlp_epoch000.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch000.h5 > fig8/mlp_epoch000.jsonl
fact analyze fig8/mlp_epoch010.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch010.h5 > fig8/mlp_epoch010.jsonl
fact analyze fig8/mlp_epoch020.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch020.h5 > fig8/mlp_epoch020.jsonl
fact analyze fig8/mlp_epoch030.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch030.h5 > fig8/mlp_epoch030.jsonl
fact analyze fig8/mlp_epoch040.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch040.h5 > fig8/mlp_epoch040.jsonl
fact analyze fig8/mlp_epoch050.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch050.h5 > fig8/mlp_epoch050.jsonl
fact analyze fig8/mlp_epoch060.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch060.h5 > fig8/mlp_epoch060.jsonl
fact analyze fig8/mlp_epoch070.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch070.h5 > fig8/mlp_epoch070.jsonl
fact analyze fig8/mlp_epoch080.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch080.h5 > fig8/mlp_epoch080.jsonl
fact analyze fig8/mlp_epoch090.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch090.h5 > fig8/mlp_epoch090.jsonl
fact analyze fig8/mlp_epoch100.pt --relations fact,fact_sqrt,bfact,bfact_sqrt --device cpu --format jsonl --report fig8/mlp_epoch100.h5 > fig8/mlp_epoch100.jsonl
fact plot fig8/mlp_epoch000.h5 fig8/mlp_epoch010.h5 fig8/mlp_epoch020.h5 fig8/mlp_epoch030.h5 fig8/mlp_epoch040.h5 fig8/mlp_epoch050.h5 fig8/mlp_epoch060.h5 fig8/mlp_epoch070.h5 fig8/mlp_epoch080.h5 fig8/mlp_epoch090.h5 fig8/mlp_epoch100.h5 --kind epochs --relations fact,fact_sqrt --dpi 100 --out fig8/epochs.png
