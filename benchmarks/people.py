"""``--faces all``: identity switches, share of frames found, cost per frame with 1-4 people, and whether
the fold spread (``valence_sd``/``arousal_sd``) tells where the prediction is wrong (docs/predict.md).

1. **Identity**: scenes made of the real clips of ``../shared/testdata/videos`` side by side
   (:func:`vafusion.data.scenes.people_scene`): people who swap places, one hidden behind a card for 1 s,
   one who arrives late, one who leaves and comes back. Identity switches per minute and the share of each
   person's visible frames in which their box is found.
2. **Cost**: ``PeopleTrack`` on 1, 2 and 4 people in a 1280x720 frame, ms per frame, with the full-frame
   searches and face descriptors it needed; ``FaceTrack`` (``--faces one``) on the same one-person frames.
3. **Spread**: the demo run (``runs/demo``, all fold models) predicts a fresh synthetic corpus made with
   another seed (none of its videos was seen by any fold model) through the raw-video path; per dimension
   the Spearman rank correlation between the per-frame fold spread and the absolute error.

    python benchmarks/people.py                 # about 6 min on 2 cores
    python benchmarks/people.py --quick         # shorter scenes, 4 spread videos
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import DEMO, REPO, Section, demo_ready, load_text, table

from vafusion.data.affwild2 import read_annotation
from vafusion.data.scenes import Actor, people_scene, score_people
from vafusion.data.synth import make_corpus
from vafusion.face.detect import FaceDetector
from vafusion.face.people import PeopleTrack
from vafusion.face.track import FaceTrack
from vafusion.inference.predictor import Predictor

VIDEOS = REPO.parent / "shared" / "testdata" / "videos"


def scenes(length: int) -> dict[str, tuple[list[Actor], dict]]:
    """The identity scenes: actors (left to right) and the scene's options; spans scale with ``length``."""
    v = {k: VIDEOS / f"{k}.mp4" for k in ("d11", "d12", "s29", "s32")}
    second = 25
    mid, late = length // 2, length // 4
    return {
        "2 people, swap, 1 s occlusion": (
            [Actor(v["d11"], 110, hidden=((mid + 10, mid + 10 + second),)), Actor(v["s32"], 100)],
            {"swap_at": mid},
        ),
        "3 people, swap, occlusion, late arrival": (
            [
                Actor(v["d11"], 110),
                Actor(v["s32"], 100, hidden=((late, late + second),)),
                Actor(v["d12"], 90, absent=((0, late),)),
            ],
            {"swap_at": mid + late},
        ),
        "2 people, one leaves for 1.5 s and comes back": (
            [Actor(v["s29"], 100, absent=((mid, mid + 3 * second // 2),)), Actor(v["d12"], 80)],
            {},
        ),
    }


def identity(length: int) -> tuple[str, dict]:
    """Switches per minute and share found per person on each scene."""
    rows, data = [], {}
    for name, (actors, options) in scenes(length).items():
        scene = people_scene(actors, length, canvas=(1280, 720), fps=25.0, **options)
        track = PeopleTrack()
        outputs = [track.step(f) for f in scene.frames]
        score = score_people(scene, outputs)
        minutes = length / scene.fps / 60
        found = ", ".join(f"{100 * score.found[p]:.0f}" for p in sorted(score.found))
        rows.append(
            [name, length, score.switches, f"{score.switches / minutes:.1f}", found, f"{score.wrong:.3f}"]
        )
        data[name] = {
            "switches": score.switches,
            "found": score.found,
            "wrong": score.wrong,
            "events": score.events,
        }
    header = [
        "scene (1280x720, 25 fps)",
        "frames",
        "switches",
        "switches/min",
        "found % per person",
        "wrong/frame",
    ]
    return table(header, rows), data


def cost(length: int, rounds: int) -> tuple[str, dict]:
    """ms per frame of PeopleTrack with 1, 2 and 4 people (and FaceTrack with one), interleaved rounds."""
    clips = [VIDEOS / f"{k}.mp4" for k in ("d11", "s32", "d12", "s29")]
    frames = {n: people_scene([Actor(c, 100) for c in clips[:n]], length).frames for n in (1, 2, 4)}
    FaceTrack(detect_every=5).step(frames[1][0])  # load the models before timing
    times: dict[str, list[float]] = {}
    counts: dict[str, tuple[int, int]] = {}
    for _ in range(rounds):
        for n, fs in frames.items():
            for kind in ("all", "one") if n == 1 else ("all",):
                detector = FaceDetector()
                if kind == "all":
                    people = PeopleTrack(detector)
                    t0 = time.perf_counter()
                    for f in fs:
                        people.step(f)
                    described = people.describer.count
                else:
                    one = FaceTrack(detector, detect_every=5)
                    t0 = time.perf_counter()
                    for f in fs:
                        one.step(f, align=False)
                    described = 0
                key = f"{n} {kind}"
                times.setdefault(key, []).append((time.perf_counter() - t0) / len(fs))
                counts[key] = (detector.searches, described)
    rows = [
        [
            f"--faces {k.split()[1]}, {k.split()[0]} {'person' if k[0] == '1' else 'people'}",
            f"{1000 * np.median(v):.1f}",
            counts[k][0],
            counts[k][1],
        ]
        for k, v in times.items()
    ]
    md = table(["1280x720, faces 100 px", "ms/frame", "full-frame searches", "face descriptors"], rows)
    return md, {k: float(np.median(v)) for k, v in times.items()}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra, rb = (_ranks(x) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, ranks)
    return sums[inverse] / counts[inverse]


def spread(videos: int, seconds: float, seed: int) -> tuple[str, dict]:
    """Spearman(sd, |error|) per dimension on a fresh synthetic corpus, with every fold model of the demo."""
    predictor = Predictor.from_run(DEMO)
    sd, err, names = [], [], []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = make_corpus(Path(tmp) / "data", videos=videos, seconds=seconds, seed=seed, progress=False)
        for entry in manifest["videos"]:
            name = entry["name"]
            if entry["subjects"] != [name]:
                continue  # two annotated people in one video (_left/_right): one-subject videos only here
            split = Path(tmp) / "data" / "annotations" / "VA_Estimation_Challenge" / entry["split"]
            labels, valid = read_annotation(split / f"{name}.txt")
            table_ = predictor.predict(Path(tmp) / "data" / entry["video"])
            n = min(len(table_), len(labels))
            keep = valid[:n]
            pred = table_[["valence", "arousal"]].to_numpy()[:n][keep]
            sd.append(table_[["valence_sd", "arousal_sd"]].to_numpy()[:n][keep])
            err.append(np.abs(pred - labels[:n][keep]))
            names.append(name)
    sd_all, err_all = np.concatenate(sd), np.concatenate(err)
    rho = [spearman(sd_all[:, k], err_all[:, k]) for k in range(2)]
    per_video = np.array(
        [[spearman(s[:, k], e[:, k]) for k in range(2)] for s, e in zip(sd, err, strict=True)]
    )
    rows = [
        ["all frames pooled", len(sd_all), f"{rho[0]:+.2f}", f"{rho[1]:+.2f}"],
        [
            "median over videos",
            len(names),
            f"{np.median(per_video[:, 0]):+.2f}",
            f"{np.median(per_video[:, 1]):+.2f}",
        ],
        [
            "mean sd / mean abs error",
            "",
            *(f"{sd_all[:, k].mean():.3f} / {err_all[:, k].mean():.3f}" for k in range(2)),
        ],
    ]
    md = table(["Spearman(sd, abs error)", "n", "valence", "arousal"], rows)
    return md, {"pooled": rho, "per_video": per_video.tolist(), "videos": names, "frames": len(sd_all)}


def run(quick: bool = False, rounds: int = 2, spread_videos: int = 8) -> Section:
    """All three parts as one section of RESULTS.md (spread only where the demo run exists)."""
    length = 100 if quick else 200
    parts = [f"Identity ({load_text()}):"]
    md, data = identity(length)
    parts.append(md)
    md, data["cost"] = cost(40 if quick else 100, 1 if quick else rounds)
    parts += [f"Cost per frame (face finding and identity only; {load_text()}):", md]
    missing = demo_ready()
    if missing:
        parts.append(f"Spread: skipped, {missing}")
    else:
        md, data["spread"] = spread(4 if quick else spread_videos, 10.0, seed=1234)
        parts += ["Spread (demo run's fold models on a fresh synthetic corpus, seed 1234):", md]
    return Section("Every person (--faces all)", "\n\n".join(parts), data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="100-frame scenes, 40-frame cost clips, 4 spread videos"
    )
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds of the cost part (default 2)")
    ap.add_argument("--spread-videos", type=int, default=8, help="fresh synthetic videos for the spread part")
    args = ap.parse_args()
    sec = run(args.quick, args.rounds, args.spread_videos)
    print(f"## {sec.title}\n\n{sec.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
