#!/bin/sh
# Every finding of `fact repro` at --quick, run by hand (minutes on a 2-core CPU, shipped data);
# the light outputs (summary, commands, per-finding tables and figures) are copied to
# docs/repro/quick/.
#   sh benchmarks/repro_quick.sh [OUT]      (default OUT: runs/repro-quick; resumable)
set -e
OUT=${1:-runs/repro-quick}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fact repro all --quick --out "$OUT"
DOCS=docs/repro/quick
rm -rf "$DOCS" && mkdir -p "$DOCS"
cp "$OUT/summary.md" "$OUT/summary.jsonl" "$DOCS/"
for folder in "$OUT"/*/; do
    name=$(basename "$folder")
    [ -f "$folder/quantities.jsonl" ] || continue
    mkdir -p "$DOCS/$name"
    cp "$folder/commands.sh" "$folder/quantities.jsonl" "$folder/timing.json" "$DOCS/$name/"
    for light in "$folder"/*.md "$folder"/*.png; do
        [ -f "$light" ] && cp "$light" "$DOCS/$name/"
    done
done
echo "copied to $DOCS"
