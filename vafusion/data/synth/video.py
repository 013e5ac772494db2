"""Rendering one video: frames, aligned crops, the audio track, annotations and its manifest entry.

Runs in a worker process (see ``corpus.py``); everything random is drawn from the video's own
generator, seeded by the corpus seed and the video index, so the worker count changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from vafusion.data.synth.face import FaceTemplate, warp_patch
from vafusion.data.synth.plan import ANNOTATION_DIR, CROP_DIR, FPS, SAMPLE_RATE, VIDEO_DIR, VideoSpec
from vafusion.data.synth.scene import Person, background, make_people
from vafusion.data.synth.voice import smooth_noise, synth_voice
from vafusion.face.align import CROP_SIZE
from vafusion.io.audio import encode_audio

Lighting = tuple[np.ndarray, float]
"""Per-frame gain (n,) and a constant brightness offset."""


def _turns(n: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Who speaks per frame in the two-person video: 0 left, 1 right, alternating turns of 2-5 s."""
    who = np.zeros(n, np.int64)
    pos, side = 0, int(rng.integers(0, 2))
    while pos < n:
        length = int(rng.uniform(2.0, 5.0) * fps)
        who[pos : pos + length] = side
        pos += length
        side = 1 - side
    return who


def _audio(spec: VideoSpec, people: list[Person], rng: np.random.Generator) -> tuple[np.ndarray, list[list]]:
    """The waveform (channels, samples) for a video, and the speaker turns of a two-person video."""
    voices = [synth_voice(p.expressed[:, 0], p.expressed[:, 1], spec.fps, SAMPLE_RATE, rng) for p in people]
    turns: list[list] = []
    if len(voices) == 1:
        y = voices[0].astype(np.float64)
    else:
        who = _turns(spec.frames, spec.fps, rng)
        t = (np.arange(len(voices[0])) + 0.5) / SAMPLE_RATE
        right = np.interp(t, (np.arange(spec.frames) + 0.5) / spec.fps, who.astype(np.float64))
        k = max(int(0.05 * SAMPLE_RATE), 1)
        right = np.convolve(right, np.ones(k) / k, mode="same")
        y = (1 - right) * voices[0] / (np.abs(voices[0]).max() + 1e-9) + right * voices[1] / (
            np.abs(voices[1]).max() + 1e-9
        )
        y *= 0.7
        edges = np.flatnonzero(np.diff(who) != 0) + 1
        for s, e in zip(np.r_[0, edges], np.r_[edges, spec.frames], strict=True):
            turns.append([int(s), int(e), people[int(who[s])].subject])
    if spec.audio_channels == 2:
        delay = 7
        other = 0.75 * np.r_[np.zeros(delay), y[:-delay]] + 0.003 * rng.standard_normal(len(y))
        return np.stack([y, other]).astype(np.float32), turns
    return y[None, :].astype(np.float32), turns


def _write_annotation(path: Path, labels: np.ndarray) -> None:
    """``valence,arousal`` header then one ``v,a`` row per frame (``-5,-5`` when invalid)."""
    rows = ["valence,arousal"]
    for v, a in labels:
        rows.append("-5,-5" if v == -5.0 else f"{v:.3f},{a:.3f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def _composite(
    tmpl: FaceTemplate, scene: np.ndarray, people: list[Person], i: int, light: Lighting
) -> np.ndarray:
    """Frame ``i`` (H, W, 3) RGB: each visible person's warped face over the background, then lighting."""
    W, H = scene.shape[1], scene.shape[0]
    frame = scene.copy()
    for p in people:
        if not p.visible[i]:
            continue
        face = warp_patch(tmpl, p.patch, p.coefs[i])
        fg = cv2.warpAffine(
            face,
            p.place[i],
            (W, H),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        behind = cv2.bitwise_not(fg[..., 3])
        frame = cv2.add(
            cv2.cvtColor(fg, cv2.COLOR_RGBA2RGB),
            cv2.multiply(frame, cv2.merge([behind, behind, behind]), scale=1.0 / 255.0),
        )
    return cv2.convertScaleAbs(frame, alpha=float(light[0][i]), beta=float(light[1]))


def _write_crops(out: Path, frame: np.ndarray, people: list[Person], i: int) -> None:
    """Write each visible person's aligned crop of frame ``i`` as ``cropped_aligned/<subject>/%05d.jpg``."""
    for p in people:
        if p.visible[i]:
            crop = cv2.warpAffine(
                frame,
                p.crop[i],
                (CROP_SIZE, CROP_SIZE),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
            cv2.imwrite(
                str(out / CROP_DIR / p.subject / f"{i + 1:05d}.jpg"),
                crop[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 92],
            )


def _add_streams(container: Any, spec: VideoSpec, audio: np.ndarray | None) -> tuple[Any, Any | None]:
    """Add the H.264 yuv420p video stream and, when there is audio, the AAC stream to ``container``."""
    vs = container.add_stream("libx264", rate=spec.fps)
    vs.width, vs.height, vs.pix_fmt = spec.width, spec.height, "yuv420p"
    vs.options = {"crf": "23", "preset": "superfast"}
    vs.codec_context.thread_count = 1
    aus = None
    if audio is not None:
        aus = container.add_stream("aac", rate=SAMPLE_RATE, layout="stereo" if len(audio) == 2 else "mono")
        aus.bit_rate = 48000 * len(audio)
    return vs, aus


def _write_video(
    out: Path,
    spec: VideoSpec,
    tmpl: FaceTemplate,
    people: list[Person],
    scene: np.ndarray,
    light: Lighting,
    audio: np.ndarray | None,
) -> None:
    """Render every frame, write its crops, and encode the frames and the audio into the video's MP4."""
    video_path = out / VIDEO_DIR / f"{spec.name}.mp4"
    video_path.parent.mkdir(parents=True, exist_ok=True)
    for p in people:
        (out / CROP_DIR / p.subject).mkdir(parents=True, exist_ok=True)
    with av.open(str(video_path), "w", format="mp4") as container:
        vs, aus = _add_streams(container, spec, audio)
        for i in range(spec.frames):
            frame = _composite(tmpl, scene, people, i, light)
            _write_crops(out, frame, people, i)
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
            vf.pts = i
            for packet in vs.encode(vf):
                container.mux(packet)
        for packet in vs.encode(None):
            container.mux(packet)
        if aus is not None:
            for packet in encode_audio(aus, audio, SAMPLE_RATE):
                container.mux(packet)


def _cases(spec: VideoSpec, people: list[Person]) -> list[str]:
    """The awkward cases this video carries, as the manifest names them."""
    cases = []
    if spec.two_person:
        cases.append("two_person")
    if spec.fps != FPS:
        cases.append("fps_25")
    if spec.audio_channels == 0:
        cases.append("no_audio")
    if spec.audio_channels == 2:
        cases.append("stereo_audio")
    if any(p.invalid_spans for p in people):
        cases.append("invalid_spans")
    if any(p.no_face_spans for p in people):
        cases.append("no_face_spans")
    return cases


def _manifest_entry(spec: VideoSpec, people: list[Person], lag: int, turns: list[list]) -> dict[str, Any]:
    """The video's entry in the corpus manifest: where it is, its format, subjects and awkward cases."""
    entry: dict[str, Any] = {
        "name": spec.name,
        "video": (VIDEO_DIR / f"{spec.name}.mp4").as_posix(),
        "split": spec.split,
        "subjects": [p.subject for p in people],
        "fps": spec.fps,
        "frames": spec.frames,
        "width": spec.width,
        "height": spec.height,
        "audio_channels": spec.audio_channels,
        "sample_rate": SAMPLE_RATE if spec.audio_channels else None,
        "label_lag_frames": lag,
        "cases": _cases(spec, people),
        "invalid_spans": {p.subject: p.invalid_spans for p in people if p.invalid_spans},
        "no_face_spans": {p.subject: p.no_face_spans for p in people if p.no_face_spans},
    }
    if turns:
        entry["speaker_turns"] = turns
    return entry


def render_video(spec: VideoSpec, out: Path, tmpl: FaceTemplate) -> dict[str, Any]:
    """Render, encode and write one video with its crops and annotations; return its manifest entry."""
    rng = np.random.default_rng([spec.seed, spec.index])
    lag = int(rng.integers(2, 7))
    people = make_people(tmpl, spec, lag, rng)
    scene = background(spec.width, spec.height, rng)
    light = (
        rng.uniform(0.85, 1.15) * (1 + 0.05 * smooth_noise(spec.frames, spec.fps, 0.2, rng)),
        rng.uniform(-12, 12),
    )
    audio, turns = _audio(spec, people, rng) if spec.audio_channels else (None, [])
    _write_video(out, spec, tmpl, people, scene, light, audio)
    for p in people:
        _write_annotation(out / ANNOTATION_DIR / spec.split / f"{p.subject}.txt", p.labels)
    return _manifest_entry(spec, people, lag, turns)
