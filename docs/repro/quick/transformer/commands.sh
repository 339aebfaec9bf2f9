#!/bin/sh
# fact repro transformer: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact train transformer --dataset modular:p=23,op=add,train_frac=0.5,tokens=yes --width 32 --depth 1 --heads 4 --loss cross_entropy --optimizer adam --lr 0.003 --weight-decay 0.01 --batch-size 264 --seed 0 --norm none --schedule hold-cosine --epochs 3000 --polish 1000 --out transformer/transformer.pt --quiet --device cpu
fact analyze transformer/transformer.pt --relations fact,fact_sqrt,nfa,enfa --device cpu --format jsonl --report transformer/transformer.h5 > transformer/transformer.jsonl
fact plot transformer/transformer.h5 --kind bars --relations fact,fact_sqrt,nfa,enfa --dpi 100 --out transformer/bars.png
fact train transformer --dataset modular:p=23,op=add,train_frac=0.5,tokens=yes --width 32 --depth 1 --heads 4 --loss cross_entropy --optimizer adam --lr 0.003 --weight-decay 0.01 --batch-size 264 --seed 0 --epochs 100 --out transformer/prelayernorm.pt --quiet --device cpu
