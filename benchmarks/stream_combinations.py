"""Which combination of the offline streams fuses best? 6-fold CV of the fusion model per role assignment.

    .venv/bin/python benchmarks/stream_combinations.py                  # runs/demo data and features
    .venv/bin/python benchmarks/stream_combinations.py --variants A,B --set train.max_epochs=10

The fusion model has three roles (``visual`` is the query of the cross-modal attention; ``vggish`` and
``logmel`` are the other two branches). ``vafusion cv`` lets any extractor fill any role
(``--set features.vggish=logmel``), so a combination of two streams is a role filled twice:

* A ``landmarks | egemaps | logmel``: the default offline stand-ins for the paper's three streams;
* B ``landmarks | logmel | logmel``: face + log-mel only;
* C ``landmarks | egemaps | egemaps``: face + eGeMAPS only;
* D ``egemaps | egemaps | logmel``: voice only (no face), eGeMAPS as the query;
* E ``landmarks | landmarks | landmarks``: face only, through the same fusion architecture.

Each variant is one ``vafusion cv --models fusion`` run (its branch models are trained first, as fusion
starts from them; their CCCs are read from the run's metrics and shown too). Same folds, seeds and settings
for every variant; ``--set`` applies to all; ``--seeds`` repeats each variant with other ``cv.seed`` values on
the first seed's folds (training noise). One torch thread by default (``--threads``). Results go to
``OUT/stream_combinations.md`` and ``.csv``; finished (model, fold) pairs are reused on rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from _common import add_study_arguments, cv_over_seeds

from vafusion.io.atomic import atomic_path, write_text

VARIANTS: dict[str, tuple[str, str, str]] = {
    "A": ("landmarks", "egemaps", "logmel"),
    "B": ("landmarks", "logmel", "logmel"),
    "C": ("landmarks", "egemaps", "egemaps"),
    "D": ("egemaps", "egemaps", "logmel"),
    "E": ("landmarks", "landmarks", "landmarks"),
}
ROLES = ("visual", "vggish", "logmel")


def fold_metrics(run: Path, model: str) -> pd.DataFrame:
    """Per-fold CCC of ``model`` from ``RUN/metrics/<model>/fold<k>.json`` (written for branches too)."""
    rows = []
    for f in sorted((run / "metrics" / model).glob("fold*.json")):
        m = json.loads(f.read_text())
        rows.append(
            {"fold": int(m["fold"]), "valence": m["valence"], "arousal": m["arousal"], "mean": m["mean"]}
        )
    return pd.DataFrame(rows).sort_values("fold")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(
        ap,
        "runs/bench_stream_combinations",
        "feature store with every extractor the variants use (default runs/demo/features)",
        VARIANTS,
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(v not in VARIANTS for v in chosen):
        ap.error(f"variants are {', '.join(VARIANTS)}")
    seeds = [int(x) for x in args.seeds.split(",")]
    rows, commands, seconds = [], [], {}
    for v in chosen:
        base = args.out / f"cv_{v}_{'-'.join(VARIANTS[v])}"
        t0 = time.perf_counter()
        settings = [f"features.{role}={ext}" for role, ext in zip(ROLES, VARIANTS[v])] + args.overrides
        for seed, run in cv_over_seeds(
            args.data, args.features, base, "fusion", seeds, settings, args.quiet, commands
        ):
            for model, label in (("fusion", "fusion"),) + tuple(zip(ROLES, VARIANTS[v])):
                per = fold_metrics(run, model)
                rows.append(
                    {
                        "variant": v,
                        "streams": " | ".join(VARIANTS[v]),
                        "seed": seed,
                        "model": model,
                        "input": label,
                        "valence": per["valence"].mean(),
                        "arousal": per["arousal"].mean(),
                        "mean": per["mean"].mean(),
                        "folds": " ".join(f"{x:.3f}" for x in per["mean"]),
                        "n_folds": len(per),
                    }
                )
        seconds[v] = round(time.perf_counter() - t0, 1)
    table = pd.DataFrame(rows)
    with atomic_path(args.out / "stream_combinations.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    lines = report(table, seeds, seconds, commands)
    write_text(args.out / "stream_combinations.md", "\n".join(lines))
    print("\n".join(lines))


def report(
    table: pd.DataFrame, seeds: list[int], seconds: dict[str, float], commands: list[str]
) -> list[str]:
    """Markdown: fusion CCC per variant (averaged over seeds, with their range), then the branch models."""
    bar = chr(92) + "|"
    lines = [
        "# Stream combinations (fusion model, 6-fold CCC, mean over folds)",
        "",
        f"Averaged over training seeds {', '.join(map(str, seeds))} (same folds); "
        "range = lowest..highest seed.",
        "",
        (
            f"| variant | visual (query) {bar} vggish {bar} logmel | valence | arousal | mean "
            "| range over seeds | per-fold mean CCC (first seed) | cv s (this invocation) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, part in table[table["model"] == "fusion"].groupby("variant", sort=False):
        first = part[part["seed"] == seeds[0]].iloc[0]
        lines.append(
            f"| {v} | {first.streams.replace('|', bar)} | {part['valence'].mean():.4f} | "
            f"{part['arousal'].mean():.4f} | {part['mean'].mean():.4f} | "
            f"{part['mean'].min():.4f}..{part['mean'].max():.4f} | {first.folds} | {seconds[v]} |"
        )
    lines += [
        "",
        "Branch models trained on the way (single stream in the role it fills; averaged over seeds):",
        "",
        "| variant | role | extractor | valence | arousal | mean |",
        "|---|---|---|---|---|---|",
    ]
    branches = table[table["model"] != "fusion"].groupby(["variant", "model", "input"], sort=False)
    lines += [
        f"| {v} | {m} | {i} | {g['valence'].mean():.4f} | {g['arousal'].mean():.4f} "
        f"| {g['mean'].mean():.4f} |"
        for (v, m, i), g in branches
    ]
    lines += ["", "Commands:", "", "```"] + commands + ["```", ""]
    return lines


if __name__ == "__main__":
    main()
