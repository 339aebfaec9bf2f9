"""Output-Jacobian products: for probe vectors v over the outputs, ∂(vᵀf)/∂z for every z.

The AGOP family needs G = ∂f/∂z. With the c unit vectors as probes, Σ over probes of the
products' outer products is Σ_k ∇f_k ∇f_kᵀ exactly; S random probes with E[v vᵀ] = I
(Rademacher or Gaussian entries), each scaled by 1/√S, give an unbiased estimate of the same
sum (relations.md §8). Probes come in blocks of rows, so no c×c identity is ever formed and
memory stays at block × (batch outputs + Σ|z|) values however many outputs the model has.

`Probing` is the user's choice (how many probes, which kind, the seed, which outputs); the
random probes of sample i come from a generator seeded by (seed, i), so a result does not
depend on the batch size, the processes or the shards that summed it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import FactError

JACOBIAN_BUDGET = 512 * 2**20  # bytes of probe products held at once
GROUPS = 8                     # independent groups of probes, for the jackknife
GROUP_BUDGET = 512 * 2**20     # bytes of one layer's group sums (GROUPS × m × m, float64)
EXACT_LIMIT = 256              # default: exact up to this many outputs per sample,
DEFAULT_PROBES = 64            # else this many probes
PROBE_KINDS = ("rademacher", "gaussian")
_SLICE = re.compile(r"^(-?\d*):(-?\d*)$")


@dataclass(frozen=True)
class Probing:
    """How the output Jacobians of the AGOP family are summed.

    probes: "auto" (exact up to EXACT_LIMIT outputs, else DEFAULT_PROBES), "exact", or S (a
    multiple of GROUPS); kind, seed: of the random probes; outputs: which outputs (axis 1 of
    the model's output: positions of (n, T, V), outputs of (n, c)) — all, last, K or A:B."""

    probes: int | str = "auto"
    kind: str = "rademacher"
    seed: int = 0
    outputs: str = "all"

    @classmethod
    def parse(cls, probes: int | str | None = None, kind: str | None = None,
              seed: int | None = None, outputs: str | int | None = None) -> Probing:
        """Checked options (None: the default); one-line FactError for a bad value."""
        probes = "auto" if probes is None else probes
        if isinstance(probes, str) and probes not in ("auto", "exact"):
            if not re.fullmatch(r"\d{1,9}", probes.strip()):
                raise FactError(f"--agop-probes must be exact or a number of probes "
                                f"(got {probes!r})")
            probes = int(probes)
        if isinstance(probes, bool) or not isinstance(probes, int | str):
            raise FactError(f"--agop-probes must be exact or a number of probes "
                            f"(got {probes!r})")
        if isinstance(probes, int) and (probes < GROUPS or probes % GROUPS):
            raise FactError(f"--agop-probes must be a positive multiple of {GROUPS} (the "
                            f"probes form {GROUPS} groups for the error bars; got {probes})")
        kind = "rademacher" if kind is None else kind
        if kind not in PROBE_KINDS:
            raise FactError(f"unknown --probe-kind {kind!r}; choose rademacher or gaussian")
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise FactError(f"--probe-seed must be an integer in 0..2^31-1 (got {seed!r})")
        outputs = "all" if outputs is None else str(outputs).strip()
        if outputs not in ("all", "last") and not re.fullmatch(r"-?\d+", outputs) \
                and not _SLICE.match(outputs):
            raise FactError(f"--outputs must be all, last, an index K or a slice A:B "
                            f"(got {outputs!r})")
        return cls(probes, kind, seed, outputs)

    def count(self, c: int) -> int | None:
        """The number of random probes for c outputs per sample; None: the exact sum."""
        if self.probes == "exact" or self.probes == "auto" and c <= EXACT_LIMIT:
            return None
        return DEFAULT_PROBES if self.probes == "auto" else int(self.probes)

    def select(self, output: torch.Tensor) -> torch.Tensor:
        """The outputs the AGOP runs over: `output` (n, L, ...) restricted along axis 1."""
        if self.outputs == "all":
            return output
        if output.ndim < 2:
            raise FactError(f"--outputs {self.outputs} needs outputs with an axis after the "
                            f"batch; the model returned shape {tuple(output.shape)}")
        start, stop = self.span(output.shape[1])
        return output[:, start:stop]

    def span(self, length: int) -> tuple[int, int]:
        """[start, stop) of the chosen outputs among `length`; FactError when empty or outside."""
        text = self.outputs
        if text == "last":
            return length - 1, length
        match = _SLICE.match(text)
        if match is None:
            index = int(text) + (length if int(text) < 0 else 0)
            start, stop = index, index + 1
        else:
            low, high = (int(part) if part else None for part in match.groups())
            start = 0 if low is None else low + length if low < 0 else low
            stop = (high + length if high < 0 else high) if high is not None else length
        if not 0 <= start < stop <= length:
            raise FactError(f"--outputs {text} selects nothing of the {length} entries on axis "
                            "1 of the model's output")
        return start, stop

    def record(self) -> dict[str, Any]:
        """What a report records of the choice (`agop_probes` is what was used: finish)."""
        return {"agop_probes_requested": str(self.probes), "probe_kind": self.kind,
                "probe_seed": self.seed, "probe_groups": GROUPS, "outputs": self.outputs}


def has_groups(m: int) -> bool:
    """Whether a layer of m outputs keeps per-group sums (GROUPS × m × m) for its error bars."""
    return GROUPS * m * m * 8 <= GROUP_BUDGET


def block_size(output: torch.Tensor, zs: list[torch.Tensor], scaled: bool) -> int:
    """How many probes per batched backward fit the budget."""
    per_probe = sum(z.numel() for z in zs) + (output.numel() if scaled else 0)
    per_probe *= output.element_size()
    return max(1, min(output.shape[1], JACOBIAN_BUDGET // max(per_probe, 1)))


def basis_probes(output: torch.Tensor, scale: torch.Tensor | None, block: int
                 ) -> Iterator[torch.Tensor]:
    """The unit vectors e_k of the c outputs, `block` at a time, each as a probe over the whole
    batch (shape (rows, n, c)); sample i's row is multiplied by scale_i when given (√w_i, so
    that the products' outer products carry the sample weight w_i)."""
    n, c = output.shape
    for start in range(0, c, block):
        stop = min(start + block, c)
        rows = torch.zeros(stop - start, c, dtype=output.dtype, device=output.device)
        rows[:, start:stop].fill_diagonal_(1)
        probe = rows.unsqueeze(1).expand(-1, n, -1)
        yield probe if scale is None else probe * scale.to(output.dtype).reshape(1, n, 1)


def random_probes(output: torch.Tensor, scale: torch.Tensor | None, count: int, kind: str,
                  seeds: list[int], block: int) -> Iterator[tuple[int, torch.Tensor]]:
    """`count` random probes per sample, as (group, probes of shape (rows, n, c)) blocks that
    never straddle two of the GROUPS groups; sample i's probes come from its own generator
    (`seeds[i]`), drawn block by block. Each probe carries 1/√count (the estimate's mean) and
    scale_i when given."""
    n, c = output.shape
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    factor = torch.full((n,), 1 / math.sqrt(count), dtype=torch.float64)
    if scale is not None:
        factor = factor * scale.detach().double().cpu()
    per_group = count // GROUPS
    for group in range(GROUPS):
        for start in range(0, per_group, block):
            rows = min(block, per_group - start)
            draws = torch.stack([_draw(kind, (rows, c), generator) for generator in generators],
                                dim=1)
            yield group, (draws * factor.reshape(1, n, 1)).to(output.device, output.dtype)


def _draw(kind: str, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Entries with mean 0 and variance 1, in float64 (the same draws for every run dtype)."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).double() * 2 - 1


def sample_seeds(seed: int, first: int, n: int) -> list[int]:
    """Generator seeds of samples first..first+n-1 (32 bits: what torch's CPU generator
    keys on), distinct for the samples of one seed and for the seeds of one sample."""
    return [(seed * 0x9E3779B1 + (first + i) * 0x85EBCA77) % 2**32 for i in range(n)]


def probe_products(output: torch.Tensor, zs: list[torch.Tensor], probes: torch.Tensor
                   ) -> tuple[torch.Tensor, ...]:
    """∂(vᵀ output)/∂z for each probe v (a leading axis) and each z: one batched backward."""
    options = dict(retain_graph=True, allow_unused=True, materialize_grads=True)
    try:
        return torch.autograd.grad(output, zs, grad_outputs=probes, is_grads_batched=True,
                                   **options)
    except RuntimeError as error:
        if "vmap" not in str(error).lower() and "batched" not in str(error).lower():
            raise
    # An operation without a batching rule: one backward per probe instead.
    per_probe = [torch.autograd.grad(output, zs, grad_outputs=probe, **options)
                 for probe in probes]
    return tuple(torch.stack(grads) for grads in zip(*per_probe))
