"""The report of a run: tables (``tables``), figures (``figures``), and the Markdown and
self-contained HTML documents (``render``)."""

from cmm.report.render import build_report

__all__ = ["build_report"]
