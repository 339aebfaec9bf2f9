#!/bin/sh
# fact repro fig5: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact rfm --data modular:p=61,op=add,train_frac=0.5,seed=0 --kernel quadratic --ridge 0 --val-frac 0 --update fact-geo --iters 60 --report fig5/fact-geo.h5 --device cpu --format jsonl > fig5/fact-geo.jsonl
fact rfm --data modular:p=61,op=add,train_frac=0.5,seed=0 --kernel quadratic --ridge 0 --val-frac 0 --update nfa --iters 25 --center --power 0.5 --report fig5/nfa.h5 --device cpu --format jsonl > fig5/nfa.jsonl
fact plot fig5/fact-geo.h5 fig5/nfa.h5 --kind rfm --dpi 100 --out fig5/rfm.png
