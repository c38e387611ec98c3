"""Heatmap of the specialisation map: layers x tasks, one panel for all windows and one per
regime; group boundaries as lines, each task's assigned group outlined. Each panel's title and
the figure's caption give the bootstrap stability of the assignment, so a map whose assignment
a resample of the windows overturns is not read as a finding."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmm.io import atomic_path


def stability_caption(result: dict) -> str:
    """One line: how often the all-windows assignment survives the bootstrap, overall and per
    task ("" for a result without stability)."""
    m = result["all"]
    if "stability" not in m:
        return ""
    resamples = result.get("settings", {}).get("bootstrap")
    of = f" of {resamples} resamples" if resamples else ""
    per_task = ", ".join(f"{t} {v:.0%}" for t, v in m["task_stability"].items())
    within = result.get("stability", {}).get("resampled_within", "regimes")
    return f"assignment stability: {m['stability']:.0%}{of} within {within} ({per_task})"


def plot_probe(result: dict, path: str | Path, title: str = "") -> Path:
    """Write the heatmap PNG of a ``FluorescentProbe.to_dict()`` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    panels = [("all windows", result["all"])] + [
        (f"{r} volatility", m) for r, m in result["regimes"].items()]
    tasks = result["tasks"]
    L = result["num_blocks"]
    groups = list(result["groups"].values())
    names = list(result["groups"].keys())
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 2.1 * len(panels), 1.5 + 0.16 * L),
                             squeeze=False, constrained_layout=True)
    maps = [np.asarray(m["map"]) for _, m in panels]
    vmin, vmax = min(float(S.min()) for S in maps), max(float(S.max()) for S in maps)
    image = None
    for ax, (label, m) in zip(axes[0], panels, strict=True):
        S = np.asarray(m["map"])
        image = ax.imshow(S, aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                          interpolation="nearest")
        ax.set_xticks(range(len(tasks)), tasks)
        stable = f", stable {m['stability']:.0%}" if "stability" in m else ""
        ax.set_title(f"{label}\n(n={m['windows']}{stable})", fontsize=9)
        for g in groups[:-1]:
            ax.axhline(g[-1] + 0.5, color="white", lw=1.0, ls="--")
        for k, task in enumerate(tasks):
            g = groups[m["assignment_index"][task]]
            ax.add_patch(Rectangle((k - 0.5, g[0] - 0.5), 1, len(g), fill=False,
                                   edgecolor="cyan", lw=2))
        ax.set_yticks(range(0, L, max(1, L // 10)))
        if ax is axes[0][0]:
            ax.set_ylabel("block: " + ", ".join(
                f"{n} {g[0]}-{g[-1]}" for n, g in zip(names, groups, strict=True)), fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="specialisation S[l, k]")
    pattern = result.get("paper_pattern", {})
    verdict = ("" if not pattern.get("applicable") else
               f" | paper pattern (shallow->mid, middle->spread, deep->volume): "
               f"{'holds' if pattern['holds'] else 'does not hold'}")
    caption = stability_caption(result)
    fig.suptitle((title + verdict).strip(" |") + (f"\n{caption}" if caption else ""), fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
