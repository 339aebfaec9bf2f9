#!/bin/sh
# fact repro sec6: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact train quadratic --dataset separation:tau=0.03 --optimizer adam --lr 0.01 --weight-decay 0.001 --epochs 2000 --polish 1000 --out sec6/quadratic_tau0.03.pt --quiet --device cpu
fact analyze sec6/quadratic_tau0.03.pt --relations fact,nfa --device cpu --format jsonl --report sec6/quadratic_tau0.03.h5 > sec6/quadratic_tau0.03.jsonl
fact train quadratic --dataset separation:tau=0.1 --optimizer adam --lr 0.01 --weight-decay 0.001 --epochs 2000 --polish 1000 --out sec6/quadratic_tau0.1.pt --quiet --device cpu
fact analyze sec6/quadratic_tau0.1.pt --relations fact,nfa --device cpu --format jsonl --report sec6/quadratic_tau0.1.h5 > sec6/quadratic_tau0.1.jsonl
fact train quadratic --dataset separation:tau=0.3 --optimizer adam --lr 0.01 --weight-decay 0.001 --epochs 2000 --polish 1000 --out sec6/quadratic_tau0.3.pt --quiet --device cpu
fact analyze sec6/quadratic_tau0.3.pt --relations fact,nfa --device cpu --format jsonl --report sec6/quadratic_tau0.3.h5 > sec6/quadratic_tau0.3.jsonl
fact train quadratic --dataset separation:tau=1 --optimizer adam --lr 0.01 --weight-decay 0.001 --epochs 2000 --polish 1000 --out sec6/quadratic_tau1.pt --quiet --device cpu
fact analyze sec6/quadratic_tau1.pt --relations fact,nfa --device cpu --format jsonl --report sec6/quadratic_tau1.h5 > sec6/quadratic_tau1.jsonl
fact plot sec6/quadratic_tau0.1.h5 --kind matrices --relations fact,nfa --dpi 100 --out sec6/matrices_tau0.1.png
