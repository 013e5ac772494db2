"""Same seed, same numbers: two `cv` runs give byte-identical results, and a rerun reuses a finished
(model, fold) only while everything it depends on is unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import TINY_NET, write_linear_feature_corpus
from vafusion.cli import main
from vafusion.config import load_config
from vafusion.data.affwild2 import scan
from vafusion.data.folds import assign_folds
from vafusion.features.extractors import resolve_streams
from vafusion.features.store import read_features, write_features
from vafusion.train.cv import CrossValidation

ANN = "annotations/VA_Estimation_Challenge"
TINY = [
    *TINY_NET,
    "cv.eval_window=40",
    "cv.eval_hop=20",
    "train.max_epochs=2",
    "fusion_stage.max_epochs=2",
    "cv.folds=[0]",
]
MODELS = ("fusion", "vggish")  # fusion trained from scratch: the cross-attention model and a single stream


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny layers: one thread is faster


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two complete `vafusion cv` runs (fusion and vggish, fold 0) with the same seed, in ``a`` and ``b``."""
    root = tmp_path_factory.mktemp("determinism")
    write_linear_feature_corpus(root, videos=8, frames=120, seed=3, noise=1.5)
    for out in ("a", "b"):
        args = [
            "cv",
            "--data",
            str(root / "data"),
            "--features",
            str(root / "feats"),
            "--out",
            str(root / out),
            "--quiet",
            "--models",
            ",".join(MODELS),
            "--set",
            "fusion_stage.init=scratch",
        ]
        assert main(args + [x for kv in TINY for x in ("--set", kv)]) == 0
    return root


def library_cv(root: Path, run: Path, *overrides: str) -> CrossValidation:
    """The vggish model on fold 0 through the library (no report, so no plotting time)."""
    cfg = load_config(None, [*TINY, *overrides])
    corpus = scan(root / "data")
    streams, notes = resolve_streams(cfg.features)
    cv = CrossValidation(
        corpus,
        root / "feats",
        run,
        cfg,
        assign_folds(corpus.samples, seed=cfg.cv.seed),
        streams,
        notes,
        progress=False,
    )
    cv.run_all(["vggish"], [0])
    return cv


def _metrics(run: Path, model: str = "vggish") -> dict:
    return json.loads((run / "metrics" / model / "fold0.json").read_text())


def test_same_seed_gives_identical_results(pair):
    a, b = pair / "a", pair / "b"
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    res = pd.read_csv(a / "results.csv", dtype={"fold": str})
    assert set(res["model"]) == set(MODELS) and res["mean"].notna().all()
    for model in MODELS:
        rel = f"predictions/{model}/fold0.parquet"
        assert pd.read_parquet(a / rel).equals(pd.read_parquet(b / rel)), rel
        sa = torch.load(a / f"models/{model}/fold0.pt", weights_only=True)["state_dict"]
        sb = torch.load(b / f"models/{model}/fold0.pt", weights_only=True)["state_dict"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), model


def test_another_seed_gives_other_results(pair):
    library_cv(pair, pair / "seed1", "cv.seed=1")  # fold 0 is the Validation_Set whatever the seed
    assert _metrics(pair / "seed1")["mean"] != _metrics(pair / "a")["mean"]


def _mtime(run: Path) -> int:
    return (run / "models/vggish/fold0.pt").stat().st_mtime_ns


def test_rerun_reuses_only_what_is_still_current(pair):
    """A finished fold is kept on rerun; a sample left out, then fixed, or a changed setting retrains it,
    and a runtime-only setting does not. After the fix the numbers are the first run's again."""
    run = pair / "rerun"
    shutil.copytree(pair / "a", run)
    first, t0 = _metrics(run), _mtime(run)
    library_cv(pair, run, "train.num_workers=0", "train.threads=1", "train.devices=1")
    assert _mtime(run) == t0  # same job: kept

    ann = pair / "data" / ANN / "Train_Set" / "vid05.txt"
    good = ann.read_text()
    lines = good.splitlines()
    lines[2] += ",0.3"
    ann.write_text("\n".join(lines) + "\n")
    try:
        cv = library_cv(pair, run)
        assert (
            list(cv.failed) == ["vid05"]
            and "vid05.txt: line 3 has 3 columns" in cv.failed["vid05"].one_line()
        )
        assert _mtime(run) != t0 and _metrics(run)["left_out"] == ["vid05"]  # trained without vid05
    finally:
        ann.write_text(good)
    library_cv(pair, run)  # fixed: trained again, on everything
    again = _metrics(run)
    assert again["left_out"] == [] and again["job"] == first["job"]
    assert {k: again[k] for k in ("valence", "arousal", "mean", "per_video")} == {
        k: first[k] for k in ("valence", "arousal", "mean", "per_video")
    }
    t1 = _mtime(run)
    library_cv(pair, run, "train.max_epochs=1")
    assert _mtime(run) != t1 and _metrics(run)["job"] != first["job"]  # another setting: retrained


def test_an_edited_annotation_or_feature_file_retrains(pair, tmp_path):
    """The job key covers what the files hold: a label edited in place (same number of rows) or a feature
    file rewritten retrains; a copy that keeps the files' times, and the label edit undone, do not."""
    root = tmp_path / "copy"
    for part in ("data", "feats"):
        shutil.copytree(pair / part, root / part)  # copy2: modification times kept
    run = root / "run"
    shutil.copytree(pair / "a", run)
    first, t0 = _metrics(run), _mtime(run)
    library_cv(root, run)
    assert _mtime(run) == t0

    ann = root / "data" / ANN / "Train_Set" / "vid05.txt"
    good = ann.read_text()
    head, *rows = good.splitlines()
    flipped = [f"{-float(v):.4f},{a}" for v, a in (r.split(",") for r in rows)]
    ann.write_text("\n".join([head, *flipped]) + "\n")
    library_cv(root, run)
    assert _mtime(run) != t0 and _metrics(run)["job"] != first["job"]
    ann.write_text(good)
    library_cv(root, run)
    assert _metrics(run)["job"] == first["job"]
    assert _metrics(run)["mean"] == first["mean"]

    t1 = _mtime(run)
    path = root / "feats" / "egemaps" / "vid05.npz"
    ff = read_features(path)
    write_features(path, ff.features * 2, ff.valid, ff.times, ff.meta)
    library_cv(root, run)
    assert _mtime(run) != t1 and _metrics(run)["job"] != first["job"]
