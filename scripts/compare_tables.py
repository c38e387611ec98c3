"""Compare the report tables of two runs (``report/tables.json``): every key, every number.

    python scripts/compare_tables.py runs-before/tiny runs-after/tiny

Floats are equal within a relative 1e-9 (sums may round differently in the last bits on
another machine); prints each difference with its path and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def differences(a, b, path: str = "") -> list[tuple]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append((f"{path}.{k}", "only in " + ("the first" if k in a else "the second")))
            else:
                out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(path, f"lengths {len(a)} and {len(b)}")]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= 1e-9 * max(1.0, abs(a)) else [(path, a, b)]
    return [] if a == b else [(path, a, b)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", type=Path, help="a run folder (with report/tables.json)")
    ap.add_argument("second", type=Path)
    args = ap.parse_args()
    a, b = (json.loads((p / "report" / "tables.json").read_text()) for p in (args.first, args.second))
    diffs = differences(a, b)
    for d in diffs:
        print(*d, sep="  ")
    print(f"{len(diffs)} difference(s) between {args.first} and {args.second}")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
