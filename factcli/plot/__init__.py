"""Figures of analyses, runs and RFM fits (needs the optional extra `factcli[plot]`).

Each function returns a matplotlib `Figure`; `save(figure, "out.svg")` writes it byte-stably.
`report.html_report` puts tables and figures into one self-contained HTML page.
"""

from ._style import check_output, save
from .figures import KINDS, RFMRun, alpha, alpha_curves, bars, epochs, matrices, rfm

__all__ = ["KINDS", "RFMRun", "alpha", "alpha_curves", "bars", "check_output", "epochs",
           "matrices", "rfm", "save"]
