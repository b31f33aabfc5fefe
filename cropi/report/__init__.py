"""Reports: step-level acceleration, tables, figures, Markdown and self-contained HTML.

This package never imports torch.
"""

from cropi.report.acceleration import acceleration, first_reach, mean_curve, smooth
from cropi.report.build import build_report

__all__ = ["acceleration", "build_report", "first_reach", "mean_curve", "smooth"]
