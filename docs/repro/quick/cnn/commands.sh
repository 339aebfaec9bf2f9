#!/bin/sh
# fact repro cnn: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact train cnn --dataset mnist-10k:n=2000,n_test=500 --channels 8,16 --width 32 --depth 2 --activation gelu --pool avg --loss mse --optimizer sgd --lr 0.3 --momentum 0.9 --weight-decay 0.001 --schedule cosine --epochs 200 --batch-size 128 --seed 0 --out cnn/cnn.pt --quiet --device cpu
fact analyze cnn/cnn.pt --relations fact,fact_sqrt,nfa,enfa --device cpu --format jsonl --report cnn/cnn.h5 > cnn/cnn.jsonl
fact plot cnn/cnn.h5 --kind bars --relations fact,fact_sqrt,nfa,enfa --dpi 100 --out cnn/bars.png
