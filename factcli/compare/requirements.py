"""`--require` expressions: a small safe grammar (no `eval`), evaluated per row.

    requirement := conjunction ("or" conjunction)*
    conjunction := comparison ("and" comparison)*
    comparison  := sum (">=" | ">" | "<=" | "<" | "==" | "!=") sum
    sum         := product (("+" | "-") product)*
    product     := unary (("*" | "/") unary)*
    unary       := "-" unary | NUMBER | NAME | "abs" "(" sum ")" | "(" sum ")"

NAME is `relation.metric` (fact.pearson) or a row field (stationarity, epoch, train_loss);
with --features: pearson, cosine, overlap, max_angle, rank. A comparison with a missing value
fails, so a requirement never holds by accident.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.conventions import METRIC_NAMES, RELATIONS
from ..errors import FactError

_TOKEN = re.compile(r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
                    r"|(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)"
                    r"|(?P<op>>=|<=|==|!=|[<>()+\-*/]))")
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
            "==": operator.eq, "!=": operator.ne}
_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


@dataclass
class Requirement:
    """A parsed `--require` expression; `holds(values)` evaluates it on one row's values."""

    text: str
    tree: tuple
    names: list[str]

    def holds(self, values: Mapping[str, float]) -> bool:
        return bool(_evaluate(self.tree, values))


def parse_requirement(text: str, names: Collection[str]) -> Requirement:
    """Parse `text`; every NAME must be one of `names` (a FactError otherwise)."""
    tokens = _tokenize(text)
    parser = _Parser(text, tokens, names)
    try:
        tree = parser.requirement()
    except RecursionError:  # hundreds of nested parentheses or signs
        raise FactError(f"bad --require {text!r}: nested too deeply") from None
    if parser.position != len(tokens):
        parser.fail(f"unexpected {tokens[parser.position][1]!r}")
    return Requirement(text, tree, list(dict.fromkeys(parser.used)))


@dataclass
class Violation:
    """One row on which one requirement failed, with the values it saw."""

    input: str
    layer: str
    requirement: str
    values: dict[str, float]


def violations(requirements: list[Requirement],
               rows: Iterable[tuple[str, str, Mapping[str, float]]]) -> list[Violation]:
    """Check every requirement on every (input, layer, values); a name absent from a row is
    an input error (e.g. a relation the analysis was not asked for), not a violation."""
    found = []
    for label, layer, values in rows:
        for requirement in requirements:
            absent = [name for name in requirement.names if name not in values]
            if absent:
                raise FactError(f"{label} layer {layer!r} has no {', '.join(absent)} "
                                f"(needed by --require {requirement.text!r})")
            if not requirement.holds(values):
                found.append(Violation(label, layer, requirement.text,
                                       {name: values[name] for name in requirement.names}))
    return found


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise FactError(f"bad --require {text!r}: cannot read {text[position:].strip()!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    if not tokens:
        raise FactError("empty --require expression")
    return tokens


class _Parser:
    """Recursive descent over the grammar above; the tree is nested tuples."""

    def __init__(self, text: str, tokens: list[tuple[str, str]], names: Collection[str]):
        self.text, self.tokens, self.names = text, tokens, names
        self.position = 0
        self.used: list[str] = []

    def fail(self, why: str) -> None:
        raise FactError(f"bad --require {self.text!r}: {why}")

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            self.fail("it ends too early")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def expect(self, value: str) -> None:
        if self.take()[1] != value:
            self.fail(f"expected {value!r}")

    def requirement(self) -> tuple:
        return self._chain("or", self.conjunction)

    def conjunction(self) -> tuple:
        return self._chain("and", self.comparison)

    def _chain(self, word: str, part: Callable[[], tuple]) -> tuple:
        tree = part()
        while self.peek() == word:
            self.take()
            tree = (word, tree, part())
        return tree

    def comparison(self) -> tuple:
        left = self.sum()
        symbol = self.peek()
        if symbol not in _COMPARE:
            self.fail("expected a comparison (>=, >, <=, <, ==, !=)"
                      + (f" before {symbol!r}" if symbol else ""))
        self.take()
        return ("compare", symbol, left, self.sum())

    def sum(self) -> tuple:
        tree = self.product()
        while self.peek() in ("+", "-"):
            tree = ("arith", self.take()[1], tree, self.product())
        return tree

    def product(self) -> tuple:
        tree = self.unary()
        while self.peek() in ("*", "/"):
            tree = ("arith", self.take()[1], tree, self.unary())
        return tree

    def unary(self) -> tuple:
        kind, value = self.take()
        if value == "-":
            return ("neg", self.unary())
        if value == "(":
            tree = self.sum()
            self.expect(")")
            return tree
        if kind == "number":
            if not math.isfinite(float(value)):
                self.fail(f"the number {value} is too large")
            return ("number", float(value))
        if value == "abs" and self.peek() == "(":
            self.take()
            tree = self.sum()
            self.expect(")")
            return ("abs", tree)
        if kind == "name" and value not in ("and", "or"):
            if value not in self.names:
                self.fail(_unknown_name(value, self.names))
            self.used.append(value)
            return ("name", value)
        self.fail(f"unexpected {value!r}")
        raise AssertionError  # fail() raises


def _unknown_name(name: str, names: Collection[str]) -> str:
    """Say which part of `relation.metric` is wrong, or list the names there are."""
    dotted = any("." in known for known in names)
    relation, dot, metric = name.partition(".")
    if dotted and dot and relation not in RELATIONS:
        return f"unknown relation {relation!r} (choose from: {', '.join(RELATIONS)})"
    if dotted and dot and metric not in METRIC_NAMES:
        return f"unknown metric {metric!r} (choose from: {', '.join(METRIC_NAMES)})"
    choices = (["relation.metric (e.g. fact.pearson)"] if dotted else []) \
        + sorted(known for known in names if "." not in known)
    return f"unknown name {name!r}; use {', '.join(choices)}"


def _evaluate(tree: tuple, values: Mapping[str, float]) -> Any:
    kind = tree[0]
    if kind == "number":
        return tree[1]
    if kind == "name":
        value = values[tree[1]]
        return math.nan if value is None else float(value)
    if kind == "neg":
        return -_evaluate(tree[1], values)
    if kind == "abs":
        return abs(_evaluate(tree[1], values))
    if kind == "arith":
        left, right = _evaluate(tree[2], values), _evaluate(tree[3], values)
        if tree[1] == "/" and right == 0:
            return math.nan
        return _ARITH[tree[1]](left, right)
    if kind == "compare":
        left, right = _evaluate(tree[2], values), _evaluate(tree[3], values)
        return not (math.isnan(left) or math.isnan(right)) and _COMPARE[tree[1]](left, right)
    if kind == "and":
        return _evaluate(tree[1], values) and _evaluate(tree[2], values)
    return _evaluate(tree[1], values) or _evaluate(tree[2], values)  # "or"
