"""The report of a run: its numbers (``tables``), its content as document blocks
(``sections``, with ``answer``, ``overview``, ``teacher``, ``paired`` and ``blocks``), its
pictures (``figures``), and the writers of the Markdown and self-contained HTML documents
(``render``)."""

from cmm.report.render import build_report

__all__ = ["build_report"]
