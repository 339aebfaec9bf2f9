#!/bin/sh
# Figures of the --quick findings, drawn with `fact plot` from the reports that
# benchmarks/repro_quick.sh left in OUT (`fact repro` does not plot by itself yet).
#   sh benchmarks/repro_figures.sh [OUT]      (default OUT: runs/repro-quick)
set -e
OUT=${1:-runs/repro-quick}
DOCS=docs/repro/quick
fact plot "$OUT/fig2-mnist/mlp.h5" --kind bars --relations fact,fact_sqrt,nfa,enfa \
    -o "$DOCS/fig2-mnist/bars.png"
fact plot "$OUT"/fig8/mlp_epoch*.h5 --kind epochs --relations fact,fact_sqrt \
    -o "$DOCS/fig8/epochs.png"
fact plot "$OUT"/fig8/mlp_epoch*.h5 --kind epochs --relations bfact,bfact_sqrt \
    -o "$DOCS/fig9-10/epochs.png"
fact plot "$OUT/fig11/linear_L4.pt" --kind alpha -o "$DOCS/fig11/alpha_L4.png"
fact plot "$OUT/fig5/fact-geo.h5" --kind rfm -o "$DOCS/fig5/fact-geo.png"
fact plot "$OUT/sec6/quadratic_tau0.1.h5" --kind matrices --relations fact,nfa \
    -o "$DOCS/sec6/matrices_tau0.1.png"
