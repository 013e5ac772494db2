"""Bad input of every kind: a one-line error naming the file and the fix, the other inputs still processed,
no traceback and no partial file. Every fixture is generated here (nothing is downloaded).

The library calls (``probe``, ``iter_frames``, ``read_audio``, ``read_annotation``, ``read_features``,
``load_*``) are exercised directly; the dataset commands ``extract`` and ``cv`` run in-process on a tiny
synthetic corpus with the bad items planted among good ones. docs/robustness.md tabulates the messages.
"""

from __future__ import annotations

import json
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import fast_cv, write_annotation, write_video
from vafusion.cli import main
from vafusion.data.affwild2 import read_annotation, scan
from vafusion.data.sequence import load_sequence
from vafusion.data.synth import make_corpus
from vafusion.errors import AnnotationError, MediaError, VafusionError, WeightsError
from vafusion.features.store import read_features, write_features
from vafusion.io.audio import encode_audio
from vafusion.io.video import iter_frames, probe, read_audio
from vafusion.weights import load_checkpoint, load_iresnet, load_vggish

ANN = "annotations/VA_Estimation_Challenge"
FAST = fast_cv(1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny layers: one thread is faster

# ---------------------------------------------------------------------------------------------- media makers


def _atoms(data: bytes) -> dict[bytes, tuple[int, int]]:
    """Top-level MP4 boxes: type -> (offset, size)."""
    out, i = {}, 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        out.setdefault(data[i + 4 : i + 8], (i, size))
        if size < 8:
            break
        i += size
    return out


def faststart(src: Path, dst: Path) -> Path:
    """Remux ``src`` with the index (``moov``) before the media data, as streaming files are made."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for pkt in inp.demux():
            if pkt.dts is None:
                continue
            pkt.stream = streams[pkt.stream.index]
            out.mux(pkt)
    return dst


def cut_mid_mdat(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """Copy ``src`` up to ``keep`` of its ``mdat`` box: a download or copy that stopped part way."""
    data = src.read_bytes()
    off, size = _atoms(data)[b"mdat"]
    dst.write_bytes(data[: off + int(size * keep)])
    return dst


def write_audio_only(path: Path, seconds: float = 1.0, sr: int = 16000) -> Path:
    """An ``.mp4`` holding only an AAC track."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * sr)) / sr)).astype(np.float32)
    with av.open(str(path), "w") as out:
        st = out.add_stream("aac", rate=sr)
        st.layout = "mono"
        for p in encode_audio(st, wave, sr):
            out.mux(p)
    return path


def vfr_times(n: int) -> np.ndarray:
    """Presentation times (s) of the variable-frame-rate clip: gaps alternate 33 ms and 67 ms."""
    return np.array([sum(33 if k % 2 == 0 else 67 for k in range(i)) for i in range(n)]) / 1000.0


def write_vfr(path: Path, n: int = 20) -> Path:
    """Variable frame rate H.264: frame i shows brightness 10 i at ``vfr_times(n)[i]``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.time_base = Fraction(1, 1000)
        for i, t in enumerate(vfr_times(n)):
            fr = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")
            fr.pts, fr.time_base = round(t * 1000), Fraction(1, 1000)
            for p in vs.encode(fr):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def write_rotated(path: Path, n: int = 5) -> Path:
    """A 64x48 clip whose track matrix says 'display rotated 90 degrees clockwise' (a phone held upright).

    Each frame has a white 8x8 square in its stored top-left corner, so the rotation can be checked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        for _ in range(n):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:8, :8] = 255
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    data = bytearray(path.read_bytes())
    moov_off, _ = _atoms(bytes(data))[b"moov"]
    i = data.find(b"tkhd", moov_off)
    matrix = i + 4 + 4 + (32 if data[i + 4] == 1 else 20) + 8 + 8
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))
    return path


# ------------------------------------------------------------------------------------- library: video files


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    good = write_video(d / "good.mp4", 30)
    m = {"good": good}
    (d / "zero.mp4").write_bytes(b"")
    m["zero"] = d / "zero.mp4"
    m["truncated"] = cut_mid_mdat(good, d / "truncated.mp4")
    m["truncated_faststart"] = cut_mid_mdat(faststart(good, d / "fs.mp4"), d / "truncated_faststart.mp4")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(6000))
    m["random"] = d / "random.mp4"
    (d / "text.mp4").write_text("these are my notes, not a video\n" * 20)
    m["text"] = d / "text.mp4"
    m["audio_only"] = write_audio_only(d / "audio_only.mp4")
    m["no_audio"] = write_video(d / "no_audio.mp4", 10, audio=False)
    m["one_frame"] = write_video(d / "one_frame.mp4", 1)
    m["rotated"] = write_rotated(d / "rotated.mp4")
    m["portrait"] = write_video(d / "portrait.mp4", 5, size=(48, 96), audio=False)
    m["vfr"] = write_vfr(d / "vfr.mp4")
    m["huge"] = write_video(d / "huge.mp4", 2, size=(3840, 2160), audio=False)
    m["audio_short"] = write_video(d / "audio_short.mp4", 30, audio_seconds=0.5)
    m["audio_long"] = write_video(d / "audio_long.mp4", 30, audio_seconds=2.0)
    return m


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize(
    "case, words",
    [
        ("zero", "empty file (0 bytes)"),
        ("truncated", "not a readable media file"),
        ("truncated_faststart", "truncated"),
        ("random", "not a readable media file"),
        ("text", "not a readable media file"),
        ("audio_only", "no video stream"),
    ],
)
def test_unreadable_videos_raise_media_error_naming_file_and_fix(media, case, words):
    p = media[case]
    with pytest.raises(MediaError) as err:
        probe(p, count_frames=True)
    msg = _one_line(err.value)
    assert str(p) in msg and words in msg and "; " in msg  # file: problem; fix
    if case == "truncated_faststart":  # the index promises 30 frames, only part of them is there
        frames = list(iter_frames(p))
        assert 0 < len(frames) < 30
        return
    with pytest.raises(MediaError):
        list(iter_frames(p))


def test_audio_of_unreadable_and_audio_only_files(media):
    for case in ("zero", "truncated", "random", "text"):
        with pytest.raises(MediaError):
            read_audio(media[case])
    wave, sr = read_audio(media["audio_only"])
    assert sr == 16000 and abs(len(wave) / sr - 1.0) < 0.1  # audio-only: no video, but its audio decodes


def test_video_without_audio_is_not_an_error(media):
    info = probe(media["no_audio"], count_frames=True)
    assert not info.has_audio and info.n_frames == 10
    assert read_audio(media["no_audio"]) is None


def test_one_frame_video(media):
    info = probe(media["one_frame"], count_frames=True)
    assert info.n_frames == 1 and info.fps == pytest.approx(30.0)
    frames = list(iter_frames(media["one_frame"]))
    assert len(frames) == 1 and frames[0].time == 0.0


def test_rotated_video_is_turned_upright(media):
    info = probe(media["rotated"], count_frames=True)
    assert info.rotation == 270 and (info.width, info.height) == (48, 64)
    img = next(iter_frames(media["rotated"])).image
    assert img.shape == (64, 48, 3)
    # rotated 90 degrees clockwise for display: the stored top-left corner is now top-right
    assert img[:6, -6:].mean() > 200 and img[:6, :6].mean() < 50
    portrait = probe(media["portrait"])
    assert (portrait.width, portrait.height, portrait.rotation) == (48, 96, 0)


def test_variable_frame_rate_keeps_real_timestamps(media):
    info = probe(media["vfr"], count_frames=True)
    assert info.n_frames == 20
    frames = list(iter_frames(media["vfr"]))
    assert np.allclose([f.time for f in frames], vfr_times(20), atol=1e-3)
    assert np.allclose([f.image.mean() for f in frames], 10 * np.arange(20), atol=3)


def test_huge_resolution_decodes(media):
    info = probe(media["huge"], count_frames=True)
    assert (info.width, info.height, info.n_frames) == (3840, 2160, 2)
    assert [f.image.shape for f in iter_frames(media["huge"])] == [(2160, 3840, 3)] * 2


def test_audio_shorter_and_longer_than_video(media):
    short, sr = read_audio(media["audio_short"])
    long, _ = read_audio(media["audio_long"])
    assert abs(len(short) / sr - 0.5) < 0.1 and abs(len(long) / sr - 2.0) < 0.1
    assert probe(media["audio_short"]).n_frames == probe(media["audio_long"]).n_frames == 30


def test_complete_avi_is_not_taken_for_truncated(tmp_path):
    """An AVI header may count more frames than the file stores (PyAV's writer lists 22 for 20); only MP4/MOV
    indexes are exact enough to call a file truncated."""
    avi = write_video(tmp_path / "clip.avi", 20, codec="mpeg4")
    info = probe(avi, count_frames=True)
    assert info.n_frames == 20 == len(list(iter_frames(avi)))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        probe(tmp_path / "nope.mp4")
    with pytest.raises(MediaError):
        probe(tmp_path)


# ------------------------------------------------------------------------------------- library: annotations


@pytest.mark.parametrize(
    "content, words",
    [
        ("", "first line is not the header"),
        ("0.1,0.2\n0.3,0.4\n", "first line is not the header"),
        ("valence;arousal\n0.1;0.2\n", "first line is not the header"),
        ("valence,arousal\n0.1,0.2\n0.1,0.2,0.3\n", "line 3 has 3 columns"),
        ("valence,arousal\n0.5\n", "line 2 has 1 columns"),
        ("valence,arousal\n0.1,abc\n", "line 2 is not numeric"),
        ("valence,arousal\n0.1,0.2\n,\n", "line 3 is not numeric"),
        ("valence,arousal\n0.1,1.5\n", "line 2 is outside [-1, 1]"),
        ("valence,arousal\n-2,0\n", "line 2 is outside [-1, 1]"),
        ("valence,arousal\n-5,0.5\nnan,0.1\n", "line 3 is outside [-1, 1]"),
        ("valence,arousal\ninf,0.1\n", "line 2 is outside [-1, 1]"),
        ("valence,arousal\n", "no annotation rows"),
    ],
)
def test_broken_annotation_names_file_line_and_fix(tmp_path, content, words):
    p = tmp_path / "video9.txt"
    p.write_text(content)
    with pytest.raises(AnnotationError) as err:
        read_annotation(p)
    msg = _one_line(err.value)
    assert str(p) in msg and words in msg and "; " in msg


def test_binary_annotation_file(tmp_path):
    p = tmp_path / "video9.txt"
    p.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    with pytest.raises(AnnotationError, match="cannot be read"):
        read_annotation(p)


def test_all_minus_five_and_mixed_minus_five_are_read(tmp_path):
    labels, valid = read_annotation(write_annotation(tmp_path / "a.txt", [(-5, -5)] * 6))
    assert labels.shape == (6, 2) and not valid.any() and (labels == 0).all()
    # one -5 in a row invalidates the whole row; -5 is the only value outside [-1, 1] allowed
    labels, valid = read_annotation(write_annotation(tmp_path / "b.txt", [(0.2, -5), (-5, 0.3), (1, -1)]))
    assert valid.tolist() == [False, False, True] and labels[2].tolist() == [1, -1]
    # a UTF-8 byte-order mark, Windows line ends and a header with spaces are fine
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbfvalence, arousal\r\n0.1,0.2\r\n-0.3,0.4\r\n\r\n")
    labels, valid = read_annotation(tmp_path / "c.txt")
    assert np.allclose(labels, [[0.1, 0.2], [-0.3, 0.4]]) and valid.all()


def test_left_right_without_a_video_is_a_listed_problem(tmp_path):
    write_video(tmp_path / "videos/batch1/real.mp4", 3, audio=False)
    write_annotation(tmp_path / ANN / "Train_Set/real.txt", [(0, 0)] * 3)
    write_annotation(tmp_path / ANN / "Train_Set/ghost_left.txt", [(0, 0)] * 3)
    write_annotation(tmp_path / ANN / "Train_Set/ghost_right.txt", [(0, 0)] * 3)
    corpus = scan(tmp_path)
    by = corpus.by_name()
    assert by["ghost_left"].video is None and by["ghost_left"].video_id == "ghost"
    assert by["real"].video is not None
    assert any("ghost_left.txt: no video named ghost.*" in p for p in corpus.problems)
    assert any("ghost_right.txt" in p for p in corpus.problems)


# ---------------------------------------------------------------------------- library: features and weights


def test_nan_and_inf_feature_rows_are_zeroed_and_masked(tmp_path):
    feats = np.ones((5, 3), np.float32)
    feats[1, 0], feats[3, 2] = np.nan, np.inf
    p = tmp_path / "landmarks" / "v.npz"
    fixed = write_features(
        p, feats, np.ones(5, bool), np.arange(5) / 30, {"extractor": "landmarks", "dim": 3}
    )
    assert fixed == {"nonfinite_rows": 2}
    ff = read_features(p)
    assert np.isfinite(ff.features).all() and ff.valid.tolist() == [True, False, True, False, True]
    assert ff.meta["nonfinite_rows"] == 2
    # a file written by something else with NaN still never hands NaN to a model
    np.savez(p, features=feats, valid=np.ones(5, bool), times=np.arange(5.0), meta=np.array("{}"))
    ff = read_features(p)
    assert np.isfinite(ff.features).all() and ff.valid.sum() == 3


def test_nan_written_into_a_file_after_extract_is_masked_when_mapped(tmp_path):
    """A file edited (or written by other code) after extract may keep a meta that calls it clean: mapped
    reads check the rows again."""
    feats = np.ones((5, 3), np.float32)
    p = tmp_path / "landmarks" / "v.npz"
    write_features(p, feats, np.ones(5, bool), np.arange(5) / 30, {"extractor": "landmarks", "dim": 3})
    meta = read_features(p).meta
    feats[2, 1], feats[4, 0] = np.nan, -np.inf
    np.savez(p, features=feats, valid=np.ones(5, bool), times=np.arange(5.0), meta=np.array(json.dumps(meta)))
    ff = read_features(p, mmap=True)
    assert ff.meta["nonfinite_rows"] == 0
    assert np.isfinite(ff.features).all() and ff.valid.tolist() == [True, True, False, True, False]


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "feature file missing"),
        (b"", "feature file is unreadable"),
        (b"PK\x03\x04 half a zip", "feature file is unreadable"),
        ("truncated", "feature file is unreadable"),
        ("pickled", "feature file is unreadable"),
        ("shape", "feature file has shape"),
    ],
)
def test_bad_feature_files(tmp_path, content, words):
    p = tmp_path / "landmarks" / "v.npz"
    p.parent.mkdir(parents=True)
    if content == "truncated":
        write_features(p, np.ones((50, 8), np.float32), np.ones(50, bool), np.arange(50.0), {"dim": 8})
        p.write_bytes(p.read_bytes()[:700])
    elif content == "pickled":
        np.savez(
            p,
            features=np.array([object()], dtype=object),
            valid=np.ones(1, bool),
            times=np.zeros(1),
            meta=np.array("{}"),
        )
    elif content == "shape":
        np.savez(
            p,
            features=np.ones((4, 2), np.float32),
            valid=np.ones(3, bool),
            times=np.zeros(4),
            meta=np.array("{}"),
        )
    elif content is not None:
        p.write_bytes(content)
    with pytest.raises(VafusionError) as err:
        read_features(p)
    msg = _one_line(err.value)
    assert str(p) in msg and words in msg and "vafusion extract" in msg


def test_model_checkpoint_problems(tmp_path):
    cases = {
        "missing.pt": None,
        "empty.pt": b"",
        "text.pt": b"not a checkpoint\n",
        "truncated.pt": "truncated",
        "foreign.pt": "foreign",
        "evil.pt": "evil",
    }
    for name, content in cases.items():
        p = tmp_path / name
        if content == "truncated":
            torch.save({"format": "vafusion-model/1", "x": torch.randn(100, 100)}, p)
            p.write_bytes(p.read_bytes()[:3000])
        elif content == "foreign":
            torch.save({"conv1.weight": torch.zeros(3)}, p)
        elif content == "evil":
            torch.save({"format": "vafusion-model/1", "x": _Boom(tmp_path / "pwned")}, p)
        elif content is not None:
            p.write_bytes(content)
        with pytest.raises(WeightsError) as err:
            load_checkpoint(p)
        msg = _one_line(err.value)
        assert str(p) in msg and "vafusion cv" in msg
    assert not (tmp_path / "pwned").exists()  # loading never ran code from the file


class _Boom:
    """Pickles to a call that creates a file: proof that a loader executed code from a checkpoint."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.target,))


def test_weights_wrong_file_wrong_architecture_truncated(tmp_path):
    from vafusion.models.iresnet import iresnet

    r18 = {
        k: torch.zeros(1, dtype=v.dtype).expand(v.shape) if v.dim() else v.clone()
        for k, v in iresnet("iresnet18").state_dict().items()
    }
    torch.save(r18, tmp_path / "r18.pth")
    with pytest.raises(WeightsError) as err:  # wrong file: face weights given as VGGish
        load_vggish(tmp_path / "r18.pth")
    msg = _one_line(err.value)
    assert "not vggish weights" in msg and "missing" in msg and "unexpected" in msg and "iresnet18" in msg
    with pytest.raises(WeightsError) as err:  # wrong architecture: r18 weights for r50
        load_iresnet("iresnet50", tmp_path / "r18.pth")
    msg = _one_line(err.value)
    assert "not iresnet50 weights" in msg and "missing (layer" in msg and "looks like iresnet18" in msg
    raw = (tmp_path / "r18.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_iresnet("iresnet18", tmp_path / "cut.pth")


# ------------------------------------------------------------------- dataset commands: bad items among good


def _labels(n: int, seed: int) -> np.ndarray:
    return np.round(np.random.default_rng(seed).uniform(-0.9, 0.9, (n, 2)), 3)


def _copy_crops(donor: Path, dst: Path, frames: list[int]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for i in frames:
        shutil.copy(donor / f"{i:05d}.jpg", dst / f"{i:05d}.jpg")


BAD_EXTRACT = {  # planted name -> words of the one-line reason `extract` lists it with
    "v_zero": "empty file (0 bytes)",
    "v_truncated": "not a readable media file",
    "v_truncated_fs": "truncated: its index lists 30 video frames but only",
    "v_random": "not a readable media file",
    "v_text": "not a readable media file",
    "v_audio_only": "no video stream",
    "a_no_header": "first line is not the header",
    "a_columns": "line 4 has 3 columns",
    "a_text": "line 2 is not numeric",
    "a_range": "line 3 is outside [-1, 1]",
    "ghost_left": "no video for ghost_left",
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, media: dict[str, Path]) -> Path:
    """A synthetic corpus with every bad video, annotation and crop case added to its Train_Set."""
    root = tmp_path_factory.mktemp("planted")
    data = root / "data"
    make_corpus(data, videos=8, seconds=2, seed=5, progress=False)
    donor = next(
        d
        for d in sorted((data / "cropped_aligned").iterdir())
        if all((d / f"{i:05d}.jpg").exists() for i in range(1, 31))
    )
    vids, train = data / "videos" / "batch2", data / ANN / "Train_Set"
    vids.mkdir(parents=True)

    def plant(
        name: str,
        video: Path | None,
        n_labels: int,
        crops: list[int] | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        if video is not None:
            shutil.copy(video, vids / f"{name}.mp4")
        write_annotation(train / f"{name}.txt", _labels(n_labels, len(name)) if labels is None else labels)
        if crops is not None:
            _copy_crops(donor, data / "cropped_aligned" / name, crops)

    every = list(range(1, 31))
    for case in ("zero", "random", "text", "audio_only"):
        plant(f"v_{case}", media[case], 30, every)
    plant("v_truncated", media["truncated"], 30, every)
    plant("v_truncated_fs", media["truncated_faststart"], 30, every)
    plant("v_no_audio", media["no_audio"], 10, every[:10])
    plant("v_one_frame", media["one_frame"], 1, [1])
    plant("v_rotated", media["rotated"], 5, every[:5])
    plant("v_vfr", media["vfr"], 20, every[:20])
    plant("v_huge", media["huge"], 2, [1, 2])
    plant("v_audio_short", media["audio_short"], 30, every)
    plant("v_audio_long", media["audio_long"], 30, every)
    plant("v_no_face", media["good"], 30, None)  # no crop folder: no face anywhere
    plant("v_some_face", media["good"], 30, every[:10] + every[20:])  # face in frames 1-10 and 21-30 only
    plant("c_corrupt", media["good"], 30, every)
    crops = data / "cropped_aligned" / "c_corrupt"
    (crops / "00003.jpg").write_bytes(b"")
    (crops / "00004.jpg").write_bytes(b"garbage, not a JPEG" * 20)
    raw = (crops / "00005.jpg").read_bytes()
    (crops / "00005.jpg").write_bytes(raw[: len(raw) // 2])  # cut short
    plant("a_all_invalid", media["good"], 30, every, labels=np.full((30, 2), -5.0))
    plant("a_longer", media["good"], 40, every)  # more annotation lines than video frames
    plant("a_shorter", media["good"], 20, every)
    plant("a_no_header", media["good"], 30, every)
    (train / "a_no_header.txt").write_text("0.1,0.2\n" * 30)
    plant("a_columns", media["good"], 30, every)
    (train / "a_columns.txt").write_text(
        "valence,arousal\n" + "0.1,0.2\n" * 2 + "0.1,0.2,0.3\n" + "0,0\n" * 27
    )
    plant("a_text", media["good"], 30, every)
    (train / "a_text.txt").write_text("valence,arousal\nhigh,low\n" + "0,0\n" * 29)
    plant("a_range", media["good"], 30, every)
    (train / "a_range.txt").write_text("valence,arousal\n0.5,0.5\n0.5,50\n" + "0,0\n" * 28)
    plant("ghost_left", None, 30, every)
    return root


@pytest.fixture(scope="module")
def extracted(planted: Path) -> tuple[int, str, str, dict]:
    """`vafusion extract` over the planted corpus: (exit code, stdout, stderr, summary)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(
            ["extract", "--data", str(planted / "data"), "--features", str(planted / "feats"), "--quiet"]
        )
    summary = json.loads((planted / "feats" / "extract_summary.json").read_text())
    return rc, out.getvalue(), err.getvalue(), summary


def test_extract_lists_every_bad_item_and_finishes_the_rest(planted, extracted):
    rc, out, err, summary = extracted
    assert rc == 1
    assert "Traceback" not in out + err
    failed = {line.split(":")[0].strip(): line for line in err.strip().splitlines()[1:]}
    assert err.splitlines()[0] == f"{len(failed)} failed:"
    assert set(failed) == set(BAD_EXTRACT)
    for name, words in BAD_EXTRACT.items():
        assert words in failed[name], failed[name]
        assert "; " in failed[name]  # problem; fix
    names = sorted(p.stem for p in (planted / "data" / ANN).rglob("*.txt"))
    good = [n for n in names if n not in BAD_EXTRACT]
    for ext, st in summary["extractors"].items():
        assert sorted(p.stem for p in (planted / "feats" / ext).glob("*.npz")) == good
        assert st["done"] == len(good) and sorted(st["failed"]) == sorted(BAD_EXTRACT)
    assert not list((planted / "feats").rglob(".*.tmp*"))  # no partial file anywhere
    for p in (planted / "feats").rglob("*.npz"):
        read_features(p)
    assert any("ghost_left.txt: no video named ghost" in p for p in summary["problems"])


def _feat(planted: Path, ext: str, name: str):
    return read_features(planted / "feats" / ext / f"{name}.npz")


def test_extract_sensible_rows_for_awkward_but_valid_items(planted, extracted):
    rows = {
        "v_no_audio": 10,
        "v_one_frame": 1,
        "v_rotated": 5,
        "v_vfr": 20,
        "v_huge": 2,
        "a_longer": 40,
        "a_shorter": 20,
        "a_all_invalid": 30,
        "v_no_face": 30,
        "v_audio_short": 30,
    }
    for ext in ("landmarks", "egemaps", "logmel"):
        for name, n in rows.items():
            ff = _feat(planted, ext, name)
            assert ff.features.shape[0] == len(ff.valid) == len(ff.times) == n, (ext, name)
            assert np.isfinite(ff.features).all()
    for ext in ("egemaps", "logmel"):
        assert not _feat(planted, ext, "v_no_audio").valid.any()  # no audio: audio rows invalid, not an error
        short = _feat(planted, ext, "v_audio_short")
        assert short.valid[:14].all() and not short.valid[16:].any()  # 0.5 s of audio covers frames 0..15
        assert _feat(planted, ext, "v_audio_long").valid.all()
        longer = _feat(planted, ext, "a_longer")
        assert longer.valid[:30].all() and not longer.valid[30:].any()  # rows past the video's end
    face = {
        n: _feat(planted, "landmarks", n).valid for n in ("v_no_face", "v_some_face", "c_corrupt", "a_longer")
    }
    assert not face["v_no_face"].any()
    assert (
        face["v_some_face"][:10].all()
        and not face["v_some_face"][10:20].any()
        and face["v_some_face"][20:].all()
    )
    assert not face["c_corrupt"][2:5].any() and face["c_corrupt"][5:].all()
    assert not face["a_longer"][30:].any()
    vfr = _feat(planted, "logmel", "v_vfr")
    assert np.allclose(vfr.times, vfr_times(20), atol=1e-3)  # audio taken at each frame's real time


def test_annotation_rows_past_the_video_end_are_neither_trained_on_nor_scored(planted, extracted):
    sample = scan(planted / "data").by_name()["a_longer"]  # 40 rows, 30 frames
    streams = {"visual": "landmarks", "vggish": "egemaps", "logmel": "logmel"}
    seq = load_sequence(sample, planted / "feats", streams, list(streams), mmap=True)
    assert seq.length == 40 and seq.label_valid[:30].all() and not seq.label_valid[30:].any()


def test_extract_redoes_files_whose_annotation_changed_length(planted, extracted, tmp_path):
    """A finished file is skipped only while it has one row per annotation row."""
    data, feats = tmp_path / "data", tmp_path / "feats"
    shutil.copytree(planted / "data", data)
    shutil.copytree(planted / "feats", feats)
    write_annotation(data / ANN / "Train_Set" / "a_shorter.txt", _labels(25, 1))
    rc, _, err = _run(["extract", "--data", str(data), "--features", str(feats), "--quiet"])
    assert rc == 1 and "Traceback" not in err  # the planted bad items still fail
    summary = json.loads((feats / "extract_summary.json").read_text())
    for ext in ("landmarks", "egemaps", "logmel"):
        assert summary["extractors"][ext]["done"] == 1, ext
        assert len(read_features(feats / ext / "a_shorter.npz").valid) == 25


def test_extract_reports_notes_for_awkward_items(extracted):
    _, out, _, summary = extracted
    notes = summary["extractors"]["landmarks"]["notes"]
    assert "v_no_face" in notes["no crop folder"]
    assert any(n.startswith("v_some_face (10)") for n in notes["frames without crop"])
    assert any(n.startswith("c_corrupt (3") for n in notes["unreadable crops"])
    audio = summary["extractors"]["egemaps"]["notes"]
    assert "v_no_audio" in audio["no audio track"] and "v_audio_short" in audio["audio shorter than video"]
    mism = " ".join(summary["length_mismatch"])
    assert "a_longer: annotation has 40 rows, video 30 frames" in mism and "a_shorter" in mism
    assert "length mismatch: a_longer" in out


def test_extract_rerun_skips_finished_and_still_lists_the_bad(planted, extracted, capsys):
    rc = main(["extract", "--data", str(planted / "data"), "--features", str(planted / "feats"), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 1 and "done    0" in out and f"{len(BAD_EXTRACT)} failed:" in err


def _run(args: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


BAD_CV = {  # planted in a copy of the feature store -> words of the reason `cv` leaves the sample out with
    "v_one_frame": "holds egemaps features, but the visual stream reads landmarks features",
    "a_shorter": "holds 68-d landmarks features, the other",
    "v_rotated": "feature file is unreadable",
}


@pytest.fixture(scope="module")
def cv_planted(planted: Path, extracted) -> tuple[int, str, str, Path]:
    """`vafusion cv` (visual model, fold 0) on the planted corpus with more bad feature files planted:
    (exit code, stdout, stderr, run directory)."""
    feats = planted / "feats_cv"
    shutil.copytree(planted / "feats", feats)
    shutil.copy(feats / "egemaps" / "v_one_frame.npz", feats / "landmarks" / "v_one_frame.npz")
    ff = read_features(feats / "landmarks" / "a_shorter.npz")
    write_features(
        feats / "landmarks" / "a_shorter.npz", ff.features[:, :68], ff.valid, ff.times, dict(ff.meta, dim=68)
    )
    raw = (feats / "logmel" / "v_rotated.npz").read_bytes()
    (feats / "logmel" / "v_rotated.npz").write_bytes(raw[: len(raw) // 2])
    ff = read_features(feats / "egemaps" / "v_vfr.npz")  # NaN rows are masked, not a reason to leave out
    bad = ff.features.copy()
    bad[3:6] = np.nan
    np.savez(
        feats / "egemaps" / "v_vfr.npz",
        features=bad,
        valid=ff.valid,
        times=ff.times,
        meta=np.array(json.dumps(ff.meta)),
    )
    run = planted / "run"
    rc, out, err = _run(
        [
            "cv",
            "--data",
            str(planted / "data"),
            "--features",
            str(feats),
            "--out",
            str(run),
            "--models",
            "visual",
            "--set",
            "cv.folds=[0]",
            "--quiet",
            *FAST,
        ]
    )
    return rc, out, err, run


def test_cv_leaves_out_bad_samples_lists_them_and_finishes_the_rest(cv_planted):
    rc, out, err, run = cv_planted
    assert rc == 1 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    # samples extract failed on carry extract's reason (the file at fault and its fix), not just "no features"
    videos = run.parent / "data" / "videos" / "batch2"
    expected = {
        **{n: f"not extracted: {videos / n}.mp4: {w}" for n, w in BAD_EXTRACT.items() if n.startswith("v_")},
        "ghost_left": "not extracted: ",
        **{n: w for n, w in BAD_EXTRACT.items() if n.startswith("a_")},
        **BAD_CV,
    }
    assert lines[0].startswith(f"{len(expected)} samples left out")
    reasons = lines[1:]
    assert len(reasons) == len(expected)
    for name, words in expected.items():
        hit = [r for r in reasons if f"/{name}." in r]
        assert len(hit) == 1 and words in hit[0] and "; " in hit[0], (name, hit)
    assert (run / "results.csv").exists() and (run / "models/visual/fold0.pt").exists()
    result = json.loads((run / "metrics/visual/fold0.json").read_text())
    assert result["left_out"] == sorted(expected) and np.isfinite(result["mean"])
    assert not list(run.rglob(".*.tmp*"))


def test_cv_without_any_usable_sample_exits_2_with_one_line(planted, extracted, tmp_path):
    rc, out, err = _run(
        [
            "cv",
            "--data",
            str(planted / "data"),
            "--features",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            *FAST,
        ]
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in out
    assert (
        "feature file missing; run `vafusion extract`" in err
        and not (tmp_path / "run" / "results.csv").exists()
    )


def test_damaged_checkpoint_on_resume_restarts_the_fold(planted, extracted, tmp_path):
    args = [
        "cv",
        "--data",
        str(planted / "data"),
        "--features",
        str(planted / "feats"),
        "--out",
        str(tmp_path / "run"),
        "--models",
        "vggish",
        "--set",
        "cv.folds=[0]",
        "--quiet",
        *FAST,
    ]
    assert _run(args)[0] == 1  # the planted bad samples are left out
    work = tmp_path / "run" / "work" / "vggish" / "fold0"
    first = json.loads((tmp_path / "run/metrics/vggish/fold0.json").read_text())
    (tmp_path / "run/metrics/vggish/fold0.json").unlink()  # as if killed before the end
    (work / "last.ckpt").write_bytes((work / "last.ckpt").read_bytes()[:5000])  # and mid-checkpoint
    rc, _, err = _run(args + ["--resume"])
    assert rc == 1 and "last.ckpt is damaged; training this fold from the start" in err
    again = json.loads((tmp_path / "run/metrics/vggish/fold0.json").read_text())
    assert again["mean"] == first["mean"]


# ------------------------------------------------------------------------------------------ CLI arguments


def test_cli_bad_arguments_exit_2_with_one_line(planted, tmp_path):
    data = str(planted / "data")
    (tmp_path / "notes.pth").write_text("my notes")
    (tmp_path / "folds.csv").write_text("who,what\n1,2\n")
    cases = [
        (
            ["extract", "--data", str(tmp_path / "nope"), "--features", str(tmp_path / "f")],
            "dataset folder not found",
        ),
        (
            ["extract", "--data", data, "--features", str(tmp_path / "f"), "--shard", "5/2"],
            "bad --shard '5/2'",
        ),
        (
            [
                "extract",
                "--data",
                data,
                "--features",
                str(tmp_path / "f"),
                "--extractors",
                "vggish",
                "--vggish-weights",
                str(tmp_path / "notes.pth"),
            ],
            "not a PyTorch checkpoint",
        ),
        (
            [
                "extract",
                "--data",
                data,
                "--features",
                str(tmp_path / "f"),
                "--extractors",
                "iresnet",
                "--iresnet-weights",
                str(tmp_path / "missing.pth"),
            ],
            "weights file not found",
        ),
        (
            ["extract", "--data", data, "--features", str(tmp_path / "f"), "--extractors", "nope"],
            "unknown extractor",
        ),
        (
            [
                "cv",
                "--data",
                data,
                "--features",
                str(tmp_path / "f"),
                "--out",
                str(tmp_path / "r"),
                "--models",
                "audio",
            ],
            "unknown model 'audio'",
        ),
        (
            [
                "cv",
                "--data",
                data,
                "--features",
                str(tmp_path / "f"),
                "--out",
                str(tmp_path / "r"),
                "--folds",
                str(tmp_path / "folds.csv"),
            ],
            "missing columns",
        ),
        (
            [
                "cv",
                "--data",
                data,
                "--features",
                str(tmp_path / "f"),
                "--out",
                str(tmp_path / "r"),
                "--set",
                "train.max_epochs=many",
            ],
            "invalid configuration",
        ),
        (
            [
                "cv",
                "--data",
                data,
                "--features",
                str(tmp_path / "f"),
                "--out",
                str(tmp_path / "r"),
                "--config",
                str(tmp_path / "none.yaml"),
            ],
            "config file not found",
        ),
    ]
    for args, words in cases:
        rc, out, err = _run(args + ["--quiet"])
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("vafusion: error: "), (args, err)
        assert words in lines[0] and "Traceback" not in out, (args, lines[0])
    assert not (tmp_path / "f").exists() or not list((tmp_path / "f").rglob("*.npz"))


def test_verbose_adds_the_traceback(planted, tmp_path):
    (tmp_path / "notes.pth").write_text("my notes")
    rc, _, err = _run(
        [
            "extract",
            "--data",
            str(planted / "data"),
            "--features",
            str(tmp_path / "f"),
            "--extractors",
            "vggish",
            "--vggish-weights",
            str(tmp_path / "notes.pth"),
            "--verbose",
        ]
    )
    lines = err.strip().splitlines()
    assert rc == 2 and lines[0].startswith("Traceback") and "WeightsError" in err
    assert lines[-1].startswith("vafusion: error: ") and "notes.pth" in lines[-1]


# -------------------------------------------------------------------------------------- predict and submit


def photo_clip(path: Path, face: list[bool], size: tuple[int, int] = (320, 240)) -> Path:
    """30 fps clip of matplotlib's Grace Hopper photograph on grey, on the frames where ``face`` is true."""
    import cv2
    import matplotlib.cbook

    photo = cv2.cvtColor(
        cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))),
        cv2.COLOR_BGR2RGB,
    )
    w, h = size
    small = cv2.resize(photo, None, fx=0.8 * h / photo.shape[0], fy=0.8 * h / photo.shape[0])
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for shown in face:
            img = np.full((h, w, 3), 110, np.uint8)
            if shown:
                y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
                img[y : y + small.shape[0], x : x + small.shape[1]] = small
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


BAD_PREDICT = {
    "zero": "empty file (0 bytes)",
    "truncated": "not a readable media file",
    "random": "not a readable media file",
    "text": "not a readable media file",
    "audio_only": "no video stream",
    "missing": "file not found",
}


def test_predict_batch_lists_bad_videos_and_predicts_the_rest(cv_planted, media, tmp_path):
    run = cv_planted[3]
    some_face = photo_clip(tmp_path / "some_face.mp4", [True] * 10 + [False] * 10)
    good = {
        "no_face": media["good"],
        "some_face": some_face,
        "no_audio": media["no_audio"],
        "one_frame": media["one_frame"],
        "rotated": media["rotated"],
        "vfr": media["vfr"],
        "huge": media["huge"],
        "audio_short": media["audio_short"],
        "audio_long": media["audio_long"],
    }
    bad = {k: media.get(k, tmp_path / "missing.mp4") for k in BAD_PREDICT}
    out = tmp_path / "pred"
    videos = [str(p) for p in list(good.values()) + list(bad.values())]
    rc, stdout, err = _run(
        [
            "predict",
            *videos,
            "--model",
            str(run),
            "--which",
            "visual",
            "--out",
            str(out),
            "--no-plot",
            "--quiet",
        ]
    )
    assert rc != 0 and "Traceback" not in stdout + err
    errors = [line for line in err.splitlines() if line.startswith("vafusion: error: ")]
    for name, words in BAD_PREDICT.items():
        hit = [e for e in errors if str(bad[name]) in e]
        assert len(hit) == 1 and words in hit[0] and "; " in hit[0], (name, hit)
        assert not (out / f"{bad[name].stem}.csv").exists()
    assert not list(out.glob(".*.tmp*"))
    frames = {
        "no_face": 30,
        "some_face": 20,
        "no_audio": 10,
        "one_frame": 1,
        "rotated": 5,
        "vfr": 20,
        "huge": 2,
        "audio_short": 30,
        "audio_long": 30,
    }
    for name, path in good.items():
        table = pd.read_csv(out / f"{path.stem}.csv")
        assert len(table) == frames[name] and table[["valence", "arousal"]].notna().all().all(), name
    assert pd.read_csv(out / "good.csv")["face"].sum() == 0  # no face anywhere: predicted, face column 0
    face = pd.read_csv(out / "some_face.csv")["face"].to_numpy()
    assert face[:10].all() and not face[10:].any()
    assert np.allclose(pd.read_csv(out / "vfr.csv")["time"], vfr_times(20), atol=1e-3)


def test_predict_without_a_usable_model_exits_2(media, tmp_path):
    (tmp_path / "run").mkdir()
    for run in (tmp_path / "nope", tmp_path / "run"):
        rc, _, err = _run(
            ["predict", str(media["good"]), "--model", str(run), "--out", str(tmp_path / "o"), "--quiet"]
        )
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and str(run) in lines[0], err


def test_submit_check_and_list_problems(planted, tmp_path):
    data = str(planted / "data")
    names = tmp_path / "list.txt"
    names.write_text("v_one_frame\nv_no_audio.mp4\n")
    sub = tmp_path / "sub.csv"
    rows = ["image_location,valence,arousal", "v_one_frame/00001.jpg,0.1,0.2"]
    rows += [f"v_no_audio/{i:05d}.jpg,0.1,0.2" for i in range(1, 11)]
    sub.write_text("\n".join(rows) + "\n")
    rc, out, err = _run(["submit", "--data", data, "--videos", str(names), "--check", str(sub)])
    assert rc == 0 and "valid (2 videos, 11 rows)" in out, err
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "dupes.txt").write_text("a\na\n")
    (tmp_path / "ghost.txt").write_text("nobody_here\n")
    broken = [
        ("wrong header", "val,ar\n", "not the header"),
        ("missing frames", "\n".join(rows[:-3]) + "\n", "miss frames (v_no_audio (3 of 10))"),
        (
            "out of range",
            "\n".join(rows[:1] + ["v_one_frame/00001.jpg,1.5,0"] + rows[2:]) + "\n",
            "outside [-1, 1]",
        ),
    ]
    for _, text, words in broken:
        sub.write_text(text)
        rc, _, err = _run(["submit", "--data", data, "--videos", str(names), "--check", str(sub)])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and words in err and str(sub) in err, err
    for listing, words in (
        ("empty.txt", "the video list is empty"),
        ("dupes.txt", "listed twice"),
        ("ghost.txt", "no video for 1 listed names"),
        ("none.txt", "video list not found"),
    ):
        rc, _, err = _run(
            ["submit", "--data", data, "--videos", str(tmp_path / listing), "--check", str(sub)]
        )
        assert rc == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_predict_says_when_a_video_is_truncated(cv_planted, media, tmp_path):
    _, _, err = _run(
        [
            "predict",
            str(media["truncated_faststart"]),
            "--model",
            str(cv_planted[3]),
            "--which",
            "visual",
            "--out",
            str(tmp_path),
            "--no-plot",
            "--quiet",
        ]
    )
    assert "truncated" in err
