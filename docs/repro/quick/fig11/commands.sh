#!/bin/sh
# fact repro fig11: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact train linear --dataset teacher-linear:d=10,c=10,n=100,seed=0 --depth 2 --optimizer gd --lr 0.1 --dtype float64 --weight-decay 0.001 --epochs 500 --polish 100 --out fig11/linear_L2.pt --quiet --device cpu
fact analyze fig11/linear_L2.pt --relations fact,nfa --device cpu --format jsonl --report fig11/linear_L2.h5 > fig11/linear_L2.jsonl
fact train linear --dataset teacher-linear:d=10,c=10,n=100,seed=0 --depth 3 --optimizer gd --lr 0.1 --dtype float64 --weight-decay 0.001 --epochs 500 --polish 100 --out fig11/linear_L3.pt --quiet --device cpu
fact analyze fig11/linear_L3.pt --relations fact,nfa --device cpu --format jsonl --report fig11/linear_L3.h5 > fig11/linear_L3.jsonl
fact train linear --dataset teacher-linear:d=10,c=10,n=100,seed=0 --depth 4 --optimizer gd --lr 0.1 --dtype float64 --weight-decay 0.001 --epochs 500 --polish 100 --out fig11/linear_L4.pt --quiet --device cpu
fact analyze fig11/linear_L4.pt --relations fact,nfa --device cpu --format jsonl --report fig11/linear_L4.h5 > fig11/linear_L4.jsonl
fact train linear --dataset teacher-linear:d=10,c=10,n=100,seed=0 --depth 5 --optimizer gd --lr 0.1 --dtype float64 --weight-decay 0.001 --epochs 500 --polish 100 --out fig11/linear_L5.pt --quiet --device cpu
fact analyze fig11/linear_L5.pt --relations fact,nfa --device cpu --format jsonl --report fig11/linear_L5.h5 > fig11/linear_L5.jsonl
fact plot fig11/linear_L4.h5 --kind alpha --device cpu --dpi 100 --out fig11/alpha_L4.png
