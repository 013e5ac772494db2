"""Sharded extraction (`extract --shard I/N`) and `merge-features` on a tiny synthetic corpus."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vafusion.cli import main
from vafusion.data.affwild2 import scan
from vafusion.data.shards import shard_of
from vafusion.features.store import feature_path, read_features, write_features

EXTRACTORS = ("landmarks", "egemaps", "logmel")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """One corpus, extracted once without shards (``one``) and once as three shards in turn (``three``)."""
    from vafusion.data.synth import make_corpus

    root = tmp_path_factory.mktemp("shards")
    make_corpus(root / "data", videos=6, seconds=1.5, seed=1, progress=False)
    assert main(["extract", "--data", str(root / "data"), "--features", str(root / "one"), "--quiet"]) == 0
    for i in range(3):
        assert (
            main(
                [
                    "extract",
                    "--data",
                    str(root / "data"),
                    "--features",
                    str(root / "three"),
                    "--quiet",
                    "--shard",
                    f"{i}/3",
                ]
            )
            == 0
        )
    return root


def _copy(stores: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "feats"
    shutil.copytree(stores / "three", dst)
    return dst


def _merge(data: Path, feats: Path) -> int:
    return main(["merge-features", "--data", str(data), "--features", str(feats), "--quiet"])


def test_three_shards_equal_one_run_file_for_file(stores: Path, capsys) -> None:
    one, three = stores / "one", stores / "three"
    files = sorted(p.relative_to(one) for p in one.glob("*/*.npz"))
    assert files == sorted(p.relative_to(three) for p in three.glob("*/*.npz"))
    assert {f.parts[0] for f in files} == set(EXTRACTORS)
    for rel in files:
        a, b = read_features(one / rel), read_features(three / rel)
        assert np.array_equal(a.features, b.features) and np.array_equal(a.valid, b.valid)
        assert np.array_equal(a.times, b.times) and a.meta == b.meta
    # the shards split the videos (both people of a two-person video stay together) and cover them all
    parts = [json.loads((three / f"extract_summary.shard{i}of3.json").read_text()) for i in range(3)]
    assert (
        sum(p["samples"] for p in parts) == json.loads((one / "extract_summary.json").read_text())["samples"]
    )
    shard_names = [set(pd.read_parquet(three / f"manifest.shard{i}of3.parquet")["name"]) for i in range(3)]
    assert all(shard_names) and sum(len(s) for s in shard_names) == len(set().union(*shard_names))
    corpus = scan(stores / "data")
    for i, names in enumerate(shard_names):
        assert {shard_of(corpus.samples, n, 3) for n in names} == {i}
    assert len({s.video_id for s in corpus.samples}) < len(
        corpus.samples
    )  # the corpus has a two-person video
    # no shard wrote the shared manifest; the merge does, and it equals the unsharded run's
    assert not (three / "manifest.parquet").exists()
    capsys.readouterr()
    assert _merge(stores / "data", three) == 0
    assert "complete: 21/21" in capsys.readouterr().out
    key = ["extractor", "name"]
    merged = pd.read_parquet(three / "manifest.parquet").sort_values(key, ignore_index=True)
    assert merged.equals(pd.read_parquet(one / "manifest.parquet").sort_values(key, ignore_index=True))


def test_missing_file_names_its_shard_and_the_command_that_fixes_it(
    stores: Path, tmp_path: Path, capsys
) -> None:
    feats = _copy(stores, tmp_path)
    corpus = scan(stores / "data")
    victim = max(s.name for s in corpus.samples)
    shard = shard_of(corpus.samples, victim, 3)
    feature_path(feats, "egemaps", victim).unlink()
    capsys.readouterr()
    assert _merge(stores / "data", feats) == 1
    err = capsys.readouterr().err
    assert f"egemaps/{victim} [shard {shard}/3]: missing" in err
    report = json.loads((feats / "merge_report.json").read_text())
    assert not report["complete"] and report["ok"] == report["expected"] - 1
    assert not (feats / "manifest.parquet").exists()
    [command] = report["commands"]
    assert command in err and command.endswith(f"--extractors egemaps --shard {shard}/3")
    # the printed command, run as is, completes the store
    argv = shlex.split(command)
    assert argv[0] == "vafusion"
    assert main(argv[1:] + ["--quiet"]) == 0
    assert _merge(stores / "data", feats) == 0
    assert (feats / "manifest.parquet").exists()


def test_stale_and_short_files_are_reported(stores: Path, tmp_path: Path) -> None:
    feats = _copy(stores, tmp_path)
    names = sorted(s.name for s in scan(stores / "data").samples)
    stale, short = feature_path(feats, "logmel", names[0]), feature_path(feats, "landmarks", names[1])
    ff = read_features(stale)
    write_features(stale, ff.features, ff.valid, ff.times, dict(ff.meta, fingerprint="0123456789abcdef"))
    ff = read_features(short)
    write_features(short, ff.features[:-3], ff.valid[:-3], ff.times[:-3], ff.meta)
    assert _merge(stores / "data", feats) == 1
    report = json.loads((feats / "merge_report.json").read_text())
    kinds = {(p["extractor"], p["sample"]): p["kind"] for p in report["problems"]}
    assert kinds == {("logmel", names[0]): "stale", ("landmarks", names[1]): "length"}
    # a current-but-short file would be skipped by extract, so the fix deletes it first
    assert report["commands"][0] == shlex.join(["rm", "-f", str(short)])
    for command in report["commands"]:
        argv = shlex.split(command)
        if argv[0] == "rm":
            Path(argv[2]).unlink()
        else:
            assert main(argv[1:] + ["--quiet"]) == 0
    assert _merge(stores / "data", feats) == 0


def test_a_shard_leaves_other_shards_temp_files_alone(stores: Path, tmp_path: Path) -> None:
    """Shards run at the same time in one store: cleaning up after a killed run must not delete the
    half-written files of another shard that is running now."""
    feats = _copy(stores, tmp_path)
    corpus = scan(stores / "data")
    mine = next(s.name for s in corpus.samples if shard_of(corpus.samples, s.name, 3) == 0)
    other = next(s.name for s in corpus.samples if shard_of(corpus.samples, s.name, 3) == 1)
    own_temp = feats / "logmel" / f".{mine}.npz.k1l2.tmp.npz"
    other_temp = feats / "logmel" / f".{other}.npz.x9y8.tmp.npz"
    own_temp.write_bytes(b"partial")
    other_temp.write_bytes(b"partial")
    assert (
        main(
            ["extract", "--data", str(stores / "data"), "--features", str(feats), "--quiet", "--shard", "0/3"]
        )
        == 0
    )
    assert not own_temp.exists() and other_temp.exists()


@pytest.mark.parametrize("shard", ["3/3", "1/0", "a/b", "-1/2"])
def test_bad_shard_is_one_line(stores: Path, shard: str, capsys) -> None:
    assert (
        main(["extract", "--data", str(stores / "data"), "--features", str(stores / "x"), f"--shard={shard}"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shard" in err[0]


def test_rerun_command_repeats_the_settings_that_change_the_files(stores: Path, tmp_path: Path) -> None:
    """A store extracted with a non-default setting (here face_stride 3) is checked against that setting,
    and the printed fix passes it on, so the rerun makes files that the next merge accepts."""
    feats = tmp_path / "feats"
    data = str(stores / "data")
    stride = ["--set", "features.face_stride=3"]
    for i in range(2):
        assert (
            main(
                [
                    "extract",
                    "--data",
                    data,
                    "--features",
                    str(feats),
                    "--extractors",
                    "landmarks",
                    "--quiet",
                    "--shard",
                    f"{i}/2",
                    *stride,
                ]
            )
            == 0
        )
    victim = max(s.name for s in scan(stores / "data").samples)
    feature_path(feats, "landmarks", victim).unlink()
    merge = [
        "merge-features",
        "--data",
        data,
        "--features",
        str(feats),
        "--extractors",
        "landmarks",
        "--quiet",
    ]
    assert main(merge) == 1  # without the setting every file is stale; with it, one is missing
    assert main(merge + stride) == 1
    report = json.loads((feats / "merge_report.json").read_text())
    assert [p["kind"] for p in report["problems"]] == ["missing"]
    [command] = report["commands"]
    assert "features.face_stride=3" in command
    assert main(shlex.split(command)[1:] + ["--quiet"]) == 0
    assert main(merge + stride) == 0
