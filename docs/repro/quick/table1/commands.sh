#!/bin/sh
# fact repro table1: the commands it ran, in order.
# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.
cd "$(dirname "$0")/.." || exit 1
set -e
fact rfm --data sklearn:name=iris --protocol tabular --iters 5 --device cpu --format jsonl > table1/iris.jsonl
fact rfm --data sklearn:name=wine --protocol tabular --iters 5 --device cpu --format jsonl > table1/wine.jsonl
fact rfm --data sklearn:name=breast_cancer --protocol tabular --iters 5 --device cpu --format jsonl > table1/breast_cancer.jsonl
fact rfm --data sklearn:name=digits --protocol tabular --iters 5 --device cpu --format jsonl > table1/digits.jsonl
