"""The synthetic corpus: Aff-Wild2 layout, awkward cases, determinism, and that the VA signal is there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import cv2
import dlib
import numpy as np
import pytest

from vafusion.data.synth import MANIFEST, make_corpus, render_face, synth_voice
from vafusion.data.synth import plan_videos as _plan
from vafusion.errors import VafusionError
from vafusion.face.align import CROP_FACE_BOX, load_shape_predictor

ANN = Path("annotations") / "VA_Estimation_Challenge"
NAME_RE = re.compile(r"^(video\d+|\d+-(25|30)-\d+x\d+)$")
ROW_RE = re.compile(r"^(-5,-5|-?[01]\.\d{3},-?[01]\.\d{3})$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny corpus (6 videos x 2 s) rendered in one process."""
    out = tmp_path_factory.mktemp("synth") / "corpus"
    return out, make_corpus(out, videos=6, seconds=2.0, seed=0, progress=False, workers=1)


def annotation(root: Path, video: dict, subject: str) -> list[str]:
    return (root / ANN / video["split"] / f"{subject}.txt").read_text().splitlines()


def labels(root: Path, video: dict, subject: str) -> np.ndarray:
    return np.array([[float(x) for x in row.split(",")] for row in annotation(root, video, subject)[1:]])


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def mouth_lift(crop: np.ndarray) -> float:
    """Mouth corners above the lip centre, in inter-ocular distances, from dlib's 68 landmarks."""
    shape = load_shape_predictor()(np.ascontiguousarray(crop), dlib.rectangle(*CROP_FACE_BOX))
    pts = np.array([(p.x, p.y) for p in shape.parts()], float)
    iod = np.linalg.norm(pts[36:42].mean(axis=0) - pts[42:48].mean(axis=0))
    return float(((pts[51, 1] + pts[57, 1]) / 2 - (pts[48, 1] + pts[54, 1]) / 2) / iod)


def test_layout_and_file_names(corpus: tuple[Path, dict]) -> None:
    root, manifest = corpus
    assert json.loads((root / MANIFEST).read_text()) == manifest and manifest["complete"] is True
    names = [v["name"] for v in manifest["videos"]]
    assert len(names) == 6 and len(set(names)) == 6
    assert all(NAME_RE.match(n) for n in names), names
    assert sorted(p.name for p in (root / "videos" / "batch1").iterdir()) == sorted(f"{n}.mp4" for n in names)
    subjects = [s for v in manifest["videos"] for s in v["subjects"]]
    assert sorted(p.name for p in (root / "cropped_aligned").iterdir()) == sorted(subjects)
    for split in ("Train_Set", "Validation_Set"):
        files = sorted(p.name for p in (root / ANN / split).iterdir())
        assert files == sorted(f"{s}.txt" for s in manifest["splits"][split])
    for video in manifest["videos"]:
        for subject in video["subjects"]:
            crops = sorted((root / "cropped_aligned" / subject).iterdir())
            assert crops and all(re.fullmatch(r"\d{5}\.jpg", p.name) for p in crops)
            numbers = [int(p.stem) for p in crops]
            assert min(numbers) >= 1 and max(numbers) <= video["frames"]
            image = cv2.imread(str(crops[0]))
            assert image is not None and image.shape == (112, 112, 3)


def test_annotation_rows_match_decoded_frames(corpus: tuple[Path, dict]) -> None:
    root, manifest = corpus
    for video in manifest["videos"]:
        n = len(decoded_frames(root / video["video"]))
        assert n == video["frames"]
        for subject in video["subjects"]:
            rows = annotation(root, video, subject)
            assert rows[0] == "valence,arousal"
            assert len(rows) - 1 == n
            assert all(ROW_RE.match(r) for r in rows[1:]), subject
            values = labels(root, video, subject)
            ok = values[:, 0] != -5
            assert np.all(np.abs(values[ok]) <= 1) and np.all(values[~ok] == -5)
            assert values[ok, 0].std() > 0.02 and values[ok, 1].std() > 0.02


def test_splits_and_default_plan(corpus: tuple[Path, dict]) -> None:
    _, manifest = corpus
    assert manifest["splits"]["Train_Set"] and manifest["splits"]["Validation_Set"]
    for seed in range(5):
        specs = _plan(24, 15.0, seed)
        val = sum(s.split == "Validation_Set" for s in specs)
        assert val == 6 and len(specs) - val >= 10
        assert len({s.name for s in specs}) == 24 and all(NAME_RE.match(s.name) for s in specs)
        assert sum(s.fps == 25 for s in specs) == 1 and sum(s.two_person for s in specs) == 1
        assert (
            sum(s.audio_channels == 0 for s in specs) == 1 and sum(s.audio_channels == 2 for s in specs) == 1
        )
        assert sum(s.invalid_spans for s in specs) >= 3 and sum(s.no_face_spans for s in specs) >= 3


def test_container_streams(corpus: tuple[Path, dict]) -> None:
    root, manifest = corpus
    cases = manifest["cases"]
    for video in manifest["videos"]:
        with av.open(str(root / video["video"])) as container:
            vs = container.streams.video[0]
            assert vs.codec_context.name == "h264" and vs.format.name == "yuv420p"
            assert (vs.width, vs.height) == (video["width"], video["height"])
            assert float(vs.average_rate) == (25 if video["name"] == cases["fps_25"] else 30)
            if video["name"] == cases["no_audio"]:
                assert not container.streams.audio
                continue
            audio = container.streams.audio[0]
            assert audio.codec_context.name == "aac" and audio.rate == 16000
            assert audio.channels == (2 if video["name"] == cases["stereo_audio"] else 1)
            samples = np.concatenate(
                [f.to_ndarray().reshape(audio.channels, -1) for f in container.decode(audio=0)], 1
            )
        assert abs(samples.shape[1] / 16000 - video["frames"] / video["fps"]) < 0.15
        assert np.sqrt(np.mean(samples**2)) > 1e-3


def test_two_person_video(corpus: tuple[Path, dict]) -> None:
    root, manifest = corpus
    name = manifest["cases"]["two_person"]
    video = next(v for v in manifest["videos"] if v["name"] == name)
    assert video["subjects"] == [f"{name}_left", f"{name}_right"]
    assert not (root / ANN / video["split"] / f"{name}.txt").exists()
    assert not (root / "cropped_aligned" / name).exists()
    assert not list((root / "videos").rglob(f"{name}_*"))
    left, right = (labels(root, video, s) for s in video["subjects"])
    assert len(left) == len(right) == video["frames"] and not np.allclose(left, right)
    crops = [sorted(p.name for p in (root / "cropped_aligned" / s).iterdir()) for s in video["subjects"]]
    assert len(crops[0]) == len(crops[1]) == video["frames"]
    turns = video["speaker_turns"]
    assert (
        turns[0][0] == 0
        and turns[-1][1] == video["frames"]
        and {t[2] for t in turns} <= set(video["subjects"])
    )
    faces = dlib.get_frontal_face_detector()(decoded_frames(root / video["video"])[0], 1)
    assert len(faces) == 2


def test_invalid_spans_and_frames_without_face(corpus: tuple[Path, dict]) -> None:
    root, manifest = corpus
    assert manifest["cases"]["invalid_spans"] and manifest["cases"]["no_face_spans"]
    detector = dlib.get_frontal_face_detector()
    for video in manifest["videos"]:
        assert 2 <= video["label_lag_frames"] <= 6
        for subject in video["subjects"]:
            invalid = np.zeros(video["frames"], bool)
            for start, stop in video["invalid_spans"].get(subject, []):
                invalid[start:stop] = True
            assert np.array_equal(labels(root, video, subject)[:, 0] == -5, invalid)
            hidden = np.zeros(video["frames"], bool)
            for start, stop in video["no_face_spans"].get(subject, []):
                hidden[start:stop] = True
            present = np.array(
                [
                    (root / "cropped_aligned" / subject / f"{i + 1:05d}.jpg").exists()
                    for i in range(video["frames"])
                ]
            )
            assert np.array_equal(present, ~hidden)
        if video["no_face_spans"]:
            frames = decoded_frames(root / video["video"])
            start, stop = next(iter(video["no_face_spans"].values()))[0]
            assert len(detector(frames[(start + stop) // 2], 1)) == 0
            assert len(detector(frames[0 if start > 0 else stop], 1)) == 1


def test_deterministic_for_a_seed(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    root, manifest = corpus
    again = make_corpus(tmp_path / "again", videos=6, seconds=2.0, seed=0, progress=False, workers=2)
    assert again == manifest
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file()
    )
    for rel in files:
        assert (root / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    other = make_corpus(tmp_path / "other", videos=6, seconds=2.0, seed=1, progress=False, workers=1)
    assert [v["name"] for v in other["videos"]] != [v["name"] for v in manifest["videos"]]


def test_rerun_replaces_a_synthetic_corpus_and_refuses_other_folders(tmp_path: Path) -> None:
    out = tmp_path / "c"
    make_corpus(out, videos=5, seconds=0.5, seed=2, progress=False, workers=1)
    small = make_corpus(out, videos=1, seconds=0.5, seed=3, progress=False, workers=1)
    assert len(list((out / "videos" / "batch1").iterdir())) == 1
    assert len(list((out / "cropped_aligned").iterdir())) == len(small["videos"][0]["subjects"])
    (out / MANIFEST).write_text('{"generator": "vafusion.data.synth", "complete": false}')
    make_corpus(out, videos=1, seconds=0.5, seed=3, progress=False, workers=1)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(VafusionError, match="not empty"):
        make_corpus(mine, videos=1, seconds=0.5, progress=False, workers=1)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(VafusionError):
        make_corpus(tmp_path / "x", videos=0)


def test_render_face_api() -> None:
    face = render_face(0.3, -0.2)
    assert face.shape == (112, 112, 3) and face.dtype == np.uint8
    assert np.array_equal(face, render_face(0.3, -0.2))
    assert render_face(0.0, 0.0, size=64).shape == (64, 64, 3)
    a, b = (render_face(0.5, 0.0, rng=np.random.default_rng(s)) for s in (1, 2))
    assert not np.array_equal(a, b)


def test_face_shows_valence_strongly_and_arousal_weakly() -> None:
    rng = np.random.default_rng(0)
    va = rng.uniform(-1, 1, (60, 2))
    lift = np.array([mouth_lift(render_face(v, a, rng=rng)) for v, a in va])
    assert np.corrcoef(lift, va[:, 0])[0, 1] > 0.85
    assert abs(np.corrcoef(lift, va[:, 1])[0, 1]) < 0.35
    assert lift[va[:, 0] > 0.5].mean() > lift[va[:, 0] < -0.5].mean()


def test_corpus_crops_carry_valence(corpus: tuple[Path, dict]) -> None:
    root, manifest = corpus
    lift, valence = [], []
    for video in manifest["videos"]:
        lag = video["label_lag_frames"]
        for subject in video["subjects"]:
            values = labels(root, video, subject)
            for i in range(0, video["frames"] - lag, 2):
                path = root / "cropped_aligned" / subject / f"{i + 1:05d}.jpg"
                if values[i + lag, 0] != -5 and path.exists():
                    lift.append(mouth_lift(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)))
                    valence.append(values[i + lag, 0])
    assert len(lift) > 100
    assert np.corrcoef(lift, valence)[0, 1] > 0.6


def voice_features(y: np.ndarray, sample_rate: int, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per window: loudness (dB of the 90th-percentile 40 ms RMS) and f0 (autocorrelation, loudest frames)."""
    hop = int(0.04 * sample_rate)
    win = int(window_s * sample_rate) // hop * hop
    lo, hi = sample_rate // 320, sample_rate // 65
    loud, f0 = [], []
    for w in range(len(y) // win):
        frames = y[w * win : (w + 1) * win].reshape(-1, hop).astype(np.float64)
        rms = np.sqrt((frames**2).mean(axis=1))
        loud.append(20 * np.log10(np.percentile(rms, 90) + 1e-9))
        pitches = []
        for frame in frames[np.argsort(rms)[-3:]]:
            frame = frame - frame.mean()
            r = np.correlate(frame, frame, "full")[len(frame) - 1 :]
            pitches.append(sample_rate / (lo + np.argmax(r[lo:hi])))
        f0.append(np.log(np.median(pitches)))
    return np.array(loud), np.array(f0)


def test_voice_shows_arousal_strongly_and_valence_weakly() -> None:
    fps, sr = 30.0, 16000
    t = np.arange(int(30 * fps)) / fps
    arousal = 0.9 * np.sin(2 * np.pi * t / 12)
    valence = 0.9 * np.sin(2 * np.pi * t / 7 + 1)
    y = synth_voice(valence, arousal, fps, sr, np.random.default_rng(4))
    assert y.dtype == np.float32 and len(y) == 30 * sr and 0 < np.abs(y).max() < 1
    loud, f0 = voice_features(y, sr, 0.64)
    window = np.minimum((t / 0.64).astype(int), len(loud))
    a, v = (
        np.bincount(window, x, len(loud) + 1)[:-1] / np.bincount(window, None, len(loud) + 1)[:-1]
        for x in (arousal, valence)
    )
    assert np.corrcoef(loud, a)[0, 1] > 0.8
    assert np.corrcoef(f0, a)[0, 1] > 0.7
    assert abs(np.corrcoef(loud, v)[0, 1]) < 0.4 and abs(np.corrcoef(f0, v)[0, 1]) < 0.4


def test_synth_voice_api() -> None:
    rng = np.random.default_rng(0)
    y = synth_voice(np.zeros(25), np.zeros(25), 25.0, 16000, rng)
    assert y.shape == (16000,) and y.dtype == np.float32
    assert synth_voice(np.zeros(0), np.zeros(0), 30.0, 16000, rng).shape == (0,)
    with pytest.raises(ValueError):
        synth_voice(np.zeros(3), np.zeros(4), 30.0, 16000, rng)
