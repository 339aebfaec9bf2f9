#!/bin/sh
# Every finding of `fact repro` at --quick, run by hand (minutes on a 2-core CPU, shipped data);
# the light outputs (summary, commands, per-finding tables and figures) are copied to
# docs/repro/quick/.
#   sh benchmarks/repro_quick.sh [OUT [FINDING...]]   (default OUT: runs/repro-quick; resumable)
# With FINDINGs only those run: the other findings' shipped outputs (docs/repro/quick/NAME/) are
# copied into OUT first (where OUT has none), so the summary still holds every finding's rows.
set -e
OUT=${1:-runs/repro-quick}
[ $# -gt 0 ] && shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DOCS=docs/repro/quick
if [ $# -gt 0 ]; then
    mkdir -p "$OUT"
    for folder in "$DOCS"/*/; do
        name=$(basename "$folder")
        case " $* " in *" $name "*) continue ;; esac
        [ -e "$OUT/$name" ] || cp -r "$folder" "$OUT/$name"
    done
else
    set -- all
fi
fact repro "$@" --quick --out "$OUT"
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
