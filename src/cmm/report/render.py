"""``report.md`` and ``report.html`` of a run folder: the writers.

The document is first a list of blocks (headings, paragraphs, tables, figures: built by
:mod:`cmm.report.sections`), then written twice: Markdown (figures as PNG files beside it) and
one self-contained HTML file (figures embedded as base64, styles inline, nothing fetched).
``tables.json`` holds every number.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from cmm.io import atomic_path, reading, write_json
from cmm.pipeline.layout import REPORT_HTML, REPORT_MD, RunLayout
from cmm.report.blocks import Block
from cmm.report.sections import document
from cmm.report.tables import build_tables, missing_cells


def _md(blocks: list[Block], rel: Path) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text + "\n")
        elif b.kind == "p":
            out.append(b.text + "\n")
        elif b.kind == "table":
            if b.text:
                out.append(f"*{b.text}*\n")
            out.append("| " + " | ".join(b.headers) + " |")
            out.append("|" + "|".join("---" if i == 0 else "---:"
                                      for i in range(len(b.headers))) + "|")
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
                    for r in b.rows]
            out.append("")
        elif b.kind == "img":
            out.append(f"![{b.text}]({(rel / b.path.name).as_posix()})\n")
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:2em;
border-bottom:1px solid #ddd;padding-bottom:.2em}table{border-collapse:collapse;margin:.6em 0 1.4em;
font-size:.86em}th,td{border:1px solid #ddd;padding:.25em .6em}td{text-align:right;
font-variant-numeric:tabular-nums}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}
caption{caption-side:top;text-align:left;font-style:italic;color:#555;padding-bottom:.3em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}code{background:#f4f4f4;padding:0 .2em}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}"""


def _inline_md(text: str) -> str:
    """``**bold**`` and ```code``` of the paragraphs, escaped for HTML."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html(blocks: list[Block], title: str) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline_md(b.text)}</p>")
        elif b.kind == "table":
            cap = f"<caption>{html.escape(b.text)}</caption>" if b.text else ""
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                           for r in b.rows)
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                       "</table>")
        elif b.kind == "img":
            data = base64.b64encode(b.path.read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(b.text)}' "
                       f"src='data:image/png;base64,{data}'><figcaption>"
                       f"{html.escape(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``tables.json`` and ``figures/`` of the run in
    ``run_dir`` (from its ``manifest.json``) to ``out_dir`` (default ``<run>/report``)."""
    run_dir = Path(run_dir)
    where = RunLayout.read(run_dir).manifest
    with reading(where):
        manifest = json.loads(where.read_text())
    out_dir = Path(out_dir) if out_dir is not None else RunLayout.of_manifest(
        run_dir, manifest).report
    tables = build_tables(run_dir, manifest)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    blocks = document(run_dir, manifest, tables, fig_dir)
    write_json(out_dir / "tables.json", {"schema_version": 1, "tables": tables,
                                         "missing": missing_cells(tables)})
    with atomic_path(out_dir / REPORT_MD) as tmp:
        tmp.write_text(_md(blocks, Path("figures")))
    with atomic_path(out_dir / REPORT_HTML) as tmp:
        tmp.write_text(_html(blocks, manifest["config"]["report"]["title"]))
    return {"md": out_dir / REPORT_MD, "html": out_dir / REPORT_HTML,
            "tables": out_dir / "tables.json", "figures": fig_dir}


def markdown_for(run_dir: Path, rel: str) -> str:
    """The report's Markdown with its figure links relative to another folder."""
    text = (RunLayout.read(run_dir).report / REPORT_MD).read_text()
    return text.replace("](figures/", f"]({rel}/figures/")


def copy_to_run_folder(run_dir: Path) -> None:
    """The run folder's copies of the report stage's ``report.html`` and ``report.md`` (the
    Markdown's figure links relative to the run folder), each written atomically."""
    layout = RunLayout.read(run_dir)
    with atomic_path(layout.report_html) as tmp:
        tmp.write_bytes((layout.report / REPORT_HTML).read_bytes())
    with atomic_path(layout.report_md) as tmp:
        tmp.write_text(markdown_for(run_dir, layout.stage_id(layout.report)))
