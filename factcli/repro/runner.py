"""Run a finding's steps: `fact` commands, resumable, each one written to a shell script.

A step is a `fact` command line with the files it reads and makes (paths relative to the output
folder, which is also its working directory, so the commands re-run by hand as written). A
finished step leaves `.steps/<hash>.done`, the hash being that of its command, holding the
SHA-256 of each input file as it was read: running again skips a step whose command is unchanged,
whose inputs hold the same bytes and whose outputs exist, and re-runs one whose command or input
changed (an analysis of a checkpoint that was trained again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import typer

from ..errors import FactError


@dataclass(frozen=True)
class Step:
    """`fact ARGV [> stdout]`, reading `inputs` and making `outputs` (the stdout file counts as
    one)."""

    argv: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    stdout: str | None = None
    inputs: tuple[str, ...] = ()

    @classmethod
    def of(cls, *argv: object, outputs: Sequence[str] = (), stdout: str | None = None,
           inputs: Sequence[str] = ()) -> Step:
        return cls(tuple(str(a) for a in argv), tuple(outputs), stdout, tuple(inputs))

    @property
    def line(self) -> str:
        text = shlex.join(["fact", *self.argv])
        return f"{text} > {shlex.quote(self.stdout)}" if self.stdout else text

    @property
    def key(self) -> str:
        return hashlib.sha256(self.line.encode()).hexdigest()[:16]

    @property
    def files(self) -> tuple[str, ...]:
        return self.outputs + ((self.stdout,) if self.stdout else ())


@dataclass
class Runner:
    """Runs steps in `root`; `say` gets one line per step (to stderr in the CLI)."""

    root: Path
    say: Callable[[str], None] = lambda line: None
    in_process: bool = True
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def digests(self, step: Step) -> dict[str, str]:
        """SHA-256 of each input file (a missing one is the step's own error to report)."""
        found = {}
        for name in step.inputs:
            path = self.root / name
            if path.is_file():
                with open(path, "rb") as handle:
                    found[name] = hashlib.file_digest(handle, "sha256").hexdigest()
        return found

    def done(self, step: Step) -> bool:
        marker = self.root / ".steps" / f"{step.key}.done"
        if not marker.exists() or not all((self.root / f).exists() for f in step.files):
            return False
        try:
            recorded = json.loads(marker.read_text()).get("inputs", {})
        except (ValueError, AttributeError):  # a marker from an interrupted write: run again
            return False
        return recorded == self.digests(step)

    def run(self, step: Step) -> None:
        if self.done(step):
            self.reused.append(step.line)
            self.say(f"reused  {step.line}")
            return
        self.say(f"running {step.line}")
        inputs = self.digests(step)  # as read: an input rewritten while it runs re-runs it
        for name in step.files:
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        logs = self.root / ".steps"
        logs.mkdir(exist_ok=True)
        log = logs / f"{step.key}.log"
        stdout = self.root / f"{step.stdout}.partial" if step.stdout else None
        with open(log, "w") as err, open(stdout or os.devnull, "w") as out:
            code = (_in_process if self.in_process else _subprocess)(step.argv, self.root, out,
                                                                     err)
        if code != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise FactError(f"step failed (exit {code}): {step.line}: {tail[0]} "
                            f"(log: {log})")
        if stdout is not None:
            os.replace(stdout, self.root / step.stdout)
        missing = [f for f in step.files if not (self.root / f).exists()]
        if missing:
            raise FactError(f"step made no {', '.join(missing)}: {step.line}")
        (logs / f"{step.key}.done").write_text(
            json.dumps({"command": step.line, "inputs": inputs}) + "\n")
        self.ran.append(step.line)


def _subprocess(argv: Sequence[str], root: Path, out: TextIO, err: TextIO) -> int:
    environment = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "factcli", *argv], cwd=root, stdout=out,
                          stderr=err, env=environment).returncode


def _in_process(argv: Sequence[str], root: Path, out: TextIO, err: TextIO) -> int:
    """The same command through the Typer app in this process: no interpreter start and
    `import torch` per step. The working directory is the output folder while it runs."""
    from ..cli import app

    before = os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = app(args=list(argv), prog_name="fact", standalone_mode=False)
    except SystemExit as exit_:
        code = exit_.code
    except typer.TyperException as error:  # a usage error: bad option or argument
        err.write(f"error: {error}\n")
        code = getattr(error, "exit_code", 2)
    finally:
        os.chdir(before)
    return code if isinstance(code, int) else 0


def write_script(path: Path, finding: str, steps: Sequence[Step]) -> None:
    """The commands of one finding, runnable by hand from the output folder."""
    lines = ["#!/bin/sh", f"# fact repro {finding}: the commands it ran, in order.",
             "# sh DIR/FINDING/commands.sh runs them in DIR, the folder above this one.",
             'cd "$(dirname "$0")/.." || exit 1', "set -e", *(s.line for s in steps)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
