#!/bin/sh
# fact repro fig3: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact rfm --data parity:d=50,k=2,n=2000,n_test=2000,seed=0 --kernel gaussian --bandwidth 5 --ridge 0.001 --iters 5 --update fact-geo --report parity/k2_n2000_fact-geo.h5 --device cpu --format jsonl > parity/k2_n2000_fact-geo.jsonl
fact rfm --data parity:d=50,k=2,n=2000,n_test=2000,seed=0 --kernel gaussian --bandwidth 5 --ridge 0.001 --iters 5 --update nfa --power 1 --report parity/k2_n2000_nfa.h5 --device cpu --format jsonl > parity/k2_n2000_nfa.jsonl
fact plot parity/k2_n2000_fact-geo.h5 parity/k2_n2000_nfa.h5 --kind rfm --dpi 100 --out fig3/rfm_k2.png
fact rfm --data parity:d=50,k=3,n=2000,n_test=2000,seed=0 --kernel gaussian --bandwidth 5 --ridge 0.001 --iters 5 --update fact-geo --report parity/k3_n2000_fact-geo.h5 --device cpu --format jsonl > parity/k3_n2000_fact-geo.jsonl
fact rfm --data parity:d=50,k=3,n=2000,n_test=2000,seed=0 --kernel gaussian --bandwidth 5 --ridge 0.001 --iters 5 --update nfa --power 1 --report parity/k3_n2000_nfa.h5 --device cpu --format jsonl > parity/k3_n2000_nfa.jsonl
fact plot parity/k3_n2000_fact-geo.h5 parity/k3_n2000_nfa.h5 --kind rfm --dpi 100 --out fig3/rfm_k3.png
