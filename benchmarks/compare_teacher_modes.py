"""What trains in the teacher, compared on validation loss per CPU-minute (issue 15, item 2).

    .venv/bin/python benchmarks/compare_teacher_modes.py [--dataset NAME ...] [--dt-ms 1000]
        [--seconds 150] [--out docs/results/teacher-modes]

For each dataset it fits the teacher once per variant, with the same data, warm start, seed and
wall-clock cap per fit: frozen (GPT4TS: patch projection, level skip and heads; the backbone's
norms and weights fixed), LoRA on attention and MLP (peft), layer norms plus LoRA, and each of
those on the first 6 blocks only. Every validation check of every fit is kept (its CPU seconds
and standardised validation loss), then drawn as curves and summarised in a table: the best
validation loss, when it was reached, and the test R^2 of the best checkpoint. The figures are
upper bounds on time when the machine's two cores are shared.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ATTN_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VARIANTS = {
    "frozen": {"finetune": "none"},
    "lora": {"finetune": "lora", "lora_targets": ATTN_MLP},
    "layernorm+lora": {"finetune": "layernorm+lora", "lora_targets": ATTN_MLP},
    "frozen, 6 blocks": {"finetune": "none", "depth": 6},
    "lora, 6 blocks": {"finetune": "lora", "lora_targets": ATTN_MLP, "depth": 6},
    "layernorm+lora, 6 blocks": {"finetune": "layernorm+lora", "lora_targets": ATTN_MLP,
                                 "depth": 6},
}


def fit_variant(ds, name: str, base: dict, seconds: float) -> dict:
    from cmm.config import TeacherConfig
    from cmm.teacher.evaluate import regression_metrics
    from cmm.teacher.fit import fit_teacher, predict_windows

    cfg = TeacherConfig(**{**base, **VARIANTS[name], "max_train_seconds": seconds})
    cpu0 = time.process_time()
    result = fit_teacher(ds, cfg)
    cpu = time.process_time() - cpu0
    pred, _ = predict_windows(result.model, ds.windows("test"), cfg.infer_batch_size)
    test = regression_metrics(result.model.to_units_np(pred), ds.targets("test"))
    return {"variant": name, "settings": VARIANTS[name], "stopped_by": result.stopped_by,
            "steps": result.steps, "trainable_parameters": result.trainable_parameters,
            "wall_s": result.seconds, "cpu_s": cpu, "precision": result.precision,
            "history": [{"step": h["step"], "seconds": h["seconds"], "val_loss": h["val_loss"]}
                        for h in result.history],
            "best": {"step": result.best["step"], "seconds": result.best["seconds"],
                     "val_loss": result.best["val_loss"]},
            "test_r2": {k: v["r2"] for k, v in test.items()}}


def draw(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (ds_name, rows) in zip(axes[0], results.items(), strict=True):
        for r in rows:
            cpu_per_wall = r["cpu_s"] / max(r["wall_s"], 1e-9)
            xs = [h["seconds"] * cpu_per_wall / 60 for h in r["history"]]
            ax.plot(xs, [h["val_loss"] for h in r["history"]], marker=".", label=r["variant"])
        ax.set_title(ds_name)
        ax.set_xlabel("CPU minutes (both cores)")
        ax.set_ylabel("validation loss (standardised MSE)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| dataset | variant | trainable | steps | stopped by | best val loss | at CPU min "
             "| test R2 mid / spread / volume |", "|---|---|---|---|---|---|---|---|"]
    for ds_name, rows in results.items():
        for r in rows:
            cpu_per_wall = r["cpu_s"] / max(r["wall_s"], 1e-9)
            r2 = " / ".join(f"{r['test_r2'][k]:.3f}" for k in ("mid", "spread", "volume"))
            lines.append(f"| {ds_name} | {r['variant']} | {r['trainable_parameters']:,} | "
                         f"{r['steps']} | {r['stopped_by']} | {r['best']['val_loss']:.4f} | "
                         f"{r['best']['seconds'] * cpu_per_wall / 60:.1f} | {r2} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+",
                        default=["lobster-goog-2012-06-21", "bitstamp-btcusd-2015-05-01"])
    parser.add_argument("--dt-ms", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=150.0, help="wall-clock cap per fit")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("docs/results/teacher-modes"))
    args = parser.parse_args()

    from cmm.config import DataConfig, GridConfig
    from cmm.data.prepare import prepare_dataset
    from cmm.io import write_json

    base = {"epochs": 20, "batch_size": 64, "lr": 3e-4, "patience": 6, "evals_per_epoch": 4,
            "max_eval_windows": 1024, "head_init_windows": 2048, "train_stride": 4}
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for name in args.dataset:
        ds = prepare_dataset(name, DataConfig(grid=GridConfig(dt_ms=args.dt_ms)), progress=False)
        results[name] = []
        for variant in args.variants:
            row = fit_variant(ds, variant, base, args.seconds)
            results[name].append(row)
            print(f"{name} {variant}: best val {row['best']['val_loss']:.4f} at step "
                  f"{row['best']['step']} ({row['stopped_by']}, {row['steps']} steps), test R2 "
                  + ", ".join(f"{k} {v:.3f}" for k, v in row["test_r2"].items()), flush=True)
            write_json(args.out / "modes.json", {"base": base, "dt_ms": args.dt_ms,
                                                 "seconds_cap": args.seconds,
                                                 "results": results})
    draw(results, args.out / "modes.png")
    (args.out / "modes.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
