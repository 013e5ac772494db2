"""What calibrating int8 on the dataset's own crops adds to `vafusion extract`, and the kept set's size.

    .venv/bin/python benchmarks/face_calibration.py                          # this CPU
    .venv/bin/python benchmarks/avx2.py --isa avx512_vnni benchmarks/face_calibration.py

An Aff-Wild2-layout dataset is built once in ``runs/bench_face_calibration/data`` from the real aligned crops
of ``benchmarks/real_crops.py`` (one crop folder per test video, its crops as JPEG, a small video and an
annotation of as many frames), with a fixed-seed IResNet-50 (``face_encoding.reference_net``) as
``backbone.pth``. ``vafusion extract --extractors iresnet`` then runs as a fresh process, side by side in
each round: ``features.face_calibration=none`` with an empty user cache (the float path; a race where two
float paths exist) and again on that cache, then ``auto`` with an empty cache (sample, race against int8,
build int8) and again on that cache (the choice and the int8 model remembered). Each run has its own
feature folder, each setting its own ``XDG_CACHE_HOME``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import REPO, load_text, table
from face_encoding import reference_net
from real_crops import CACHE as REAL_CROPS
from real_crops import load as load_real_crops

from vafusion.features.face_int8 import CALIBRATION_FILE
from vafusion.io.audio import write_clip

WORK = REPO / "runs" / "bench_face_calibration"
ANN = "annotations/VA_Estimation_Challenge/Train_Set"
SETTINGS = (
    ("none, empty cache", "none"),
    ("none, cache kept", "none"),
    ("auto, empty cache", "auto"),
    ("auto, cache kept", "auto"),
)


def dataset(root: Path = WORK) -> tuple[Path, Path]:
    """The dataset and the weights file (made once)."""
    data, weights = root / "data", root / "backbone.pth"
    if (root / "done").exists():
        return data, weights
    if load_real_crops() is None:
        sys.exit("no real crops: ../shared/testdata/videos is missing")
    with np.load(REAL_CROPS) as z:
        crops, videos = z["crops"], z["video"]
    for name in sorted(set(videos.tolist())):
        mine = crops[videos == name]
        for i, crop in enumerate(mine, 1):
            path = data / "cropped_aligned" / name / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        write_clip(data / "videos" / f"{name}.mp4", [np.full((32, 32, 3), 128, np.uint8)] * len(mine), 30)
        (data / ANN).mkdir(parents=True, exist_ok=True)
        (data / ANN / f"{name}.txt").write_text("valence,arousal\n" + "0.1,0.2\n" * len(mine))
    torch.save(reference_net(load_real_crops()["bn"]).state_dict(), weights)
    (root / "done").write_text("ok\n")
    return data, weights


def extract_once(data: Path, weights: Path, calibration: str, feats: Path, cache: Path) -> dict:
    """One ``vafusion extract`` process: wall seconds, the face path its features record, its note."""
    cmd = [sys.executable, "-m", "vafusion.cli", "extract", "--data", str(data), "--features", str(feats)]
    cmd += ["--extractors", "iresnet", "--iresnet-weights", str(weights), "--quiet"]
    cmd += ["--set", f"features.face_calibration={calibration}"]
    t0 = time.perf_counter()
    out = subprocess.run(
        cmd, env={**os.environ, "XDG_CACHE_HOME": str(cache)}, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"extract failed: {out.stderr[-2000:]}")
    with np.load(next((feats / "iresnet").glob("*.npz"))) as z:
        params = json.loads(str(z["meta"]))["params"]
    note = next((line for line in out.stdout.splitlines() if "face calibration" in line), "")
    stored = feats / CALIBRATION_FILE
    race = ""
    if (choices := cache / "vafusion" / "face_paths.json").is_file():
        entries = json.loads(choices.read_text())["entries"].values()
        race = "; ".join(", ".join(f"{k} {v:.1f}" for k, v in e["faces_per_s"].items()) for e in entries)
    return {
        "seconds": seconds,
        "precision": params["precision"],
        "note": note,
        "race": race,
        "stored_bytes": stored.stat().st_size if stored.exists() else 0,
    }


def run(rounds: int) -> str:
    data, weights = dataset()
    rows: dict[str, list[dict]] = {label: [] for label, _ in SETTINGS}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        for r in range(rounds):
            for label, calibration in SETTINGS:  # each setting's second run finds its first one's cache
                cache = Path(tmp) / f"cache{r}-{calibration}"
                feats = Path(tmp) / f"feats{r}-{label.replace(' ', '_').replace(',', '')}"
                rows[label].append(extract_once(data, weights, calibration, feats, cache))
    lines = []
    for label, got in rows.items():
        secs = [x["seconds"] for x in got]
        base = [x["seconds"] for x in rows[label.replace("auto", "none")]]
        ratio = np.median([s / b for s, b in zip(secs, base)])
        size = got[0]["stored_bytes"]
        lines.append(
            [
                label,
                " / ".join(f"{s:.1f}" for s in secs),
                f"{ratio:.2f}",
                got[0]["precision"],
                f"{size / 1e6:.2f} MB" if size else "-",
            ]
        )
    n_crops = sum(1 for _ in (data / "cropped_aligned").rglob("*.jpg"))
    head = f"{n_crops} real crops in 4 folders, IResNet-50, face_stride 5; {rounds} round(s), {load_text()}"
    notes = "\n".join(f"* {label}: {got[0]['note']}" for label, got in rows.items() if got[0]["note"])
    races = [x["race"] for x in rows["auto, empty cache"] if x["race"]]
    notes += "".join(f"\n* race (faces/s, batch 32, round {r}): {race}" for r, race in enumerate(races))
    return (
        head
        + "\n\n"
        + table(
            ["setting", "seconds (rounds)", "x none (same cache state)", "path in features", "kept set"],
            lines,
        )
        + "\n\n"
        + notes
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the three settings (default 1)")
    print(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
