"""Copy a finished run's results into the README and docs/results/<name>/.

    python scripts/readme_results.py runs/paper

The README's tables between ``<!-- results:start -->`` and ``<!-- results:end -->`` are replaced
by the run report's own Markdown (its "The answer" section, its "Datasets" table, its
"Overview across markets" section and each market's main table), so the README shows exactly
what the report says; the whole report (``report.md`` and its figures) is copied to
``docs/results/<name>/``. Nothing is recomputed here.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def sections(md: str, level: int) -> list[tuple[str, str]]:
    """(heading, body) pairs of the Markdown's headings of exactly ``level``."""
    mark = "#" * level + " "
    out: list[tuple[str, str]] = []
    for line in md.splitlines():
        if line.startswith(mark):
            out.append((line[len(mark):].strip(), ""))
        elif out and re.match(r"^#{1,%d} " % level, line):
            out.append(("", ""))  # a higher heading ends the section
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + line + "\n")
    return [(h, b.strip()) for h, b in out if h]


def demote(md: str, by: int) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + by) + " ", md, flags=re.M)


def results_block(report_md: str, figures_rel: str) -> str:
    """The README's results: the report's provenance, "The answer", "Datasets", "Overview
    across markets" and each market's main table, one heading level down."""
    top = dict(sections(report_md, 2))
    parts = [report_md.split("\n## ", 1)[0].split("\n", 2)[2].strip()]  # provenance paragraphs
    if "The answer" in top:  # the first screen, as in the report (older reports lack it)
        parts.append("### The answer\n\n" + demote(top["The answer"], 1))
    parts.append("### Datasets\n\n" + top["Datasets"])
    if "Overview across markets" in top:
        parts.append("### Overview across markets\n\n" + demote(top["Overview across markets"], 1))
    for name, body in top.items():
        subs = dict(sections("## " + name + "\n" + body, 3))
        if "Main table" in subs:
            summary = subs["Main table"]
            parts.append(f"### Main table: {name}\n\n{summary}")
    text = "\n\n".join(parts)
    return text.replace("](report/figures/", f"]({figures_rel}/")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a finished run folder (with report.md)")
    ap.add_argument("--readme", type=Path, default=Path("README.md"))
    ap.add_argument("--docs", type=Path, default=Path("docs/results"),
                    help="where the report is copied (into <docs>/<run name>/)")
    args = ap.parse_args()
    report = args.run_dir / "report.md"
    if not report.is_file():
        raise SystemExit(f"{report}: no report; run `cmm run` to the end first")
    dest = args.docs / args.run_dir.name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(args.run_dir / "report" / "figures", dest / "report" / "figures")
    shutil.copyfile(report, dest / "report.md")
    readme = args.readme.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"{args.readme}: no {START} ... {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    block = results_block(report.read_text(), f"{dest.as_posix()}/report/figures")
    args.readme.write_text(f"{head}{START}\n{block}\n{END}{tail}")
    print(f"README results replaced from {report}; report copied to {dest}/")


if __name__ == "__main__":
    main()
