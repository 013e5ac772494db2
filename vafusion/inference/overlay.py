"""``--overlay``: a copy of the video with the face box, the recent VA trace and a VA-plane dot drawn on.

With ``--faces all`` every person's box carries their number and live valence/arousal in their own colour,
the trace shows each person's valence (thick) and arousal (thin), and the VA plane one numbered dot each.

H.264 video with the source's timestamps (variable frame rate kept, rotation applied to the pixels); the
audio stream the prediction used is copied when MP4 can hold its codec and re-encoded to AAC otherwise.
The frames count from the first one, so the audio moves with them: it keeps its offset from the video as
the streams' timestamps give it (as players and the prediction align them), and what would play before
the first frame is dropped. Streams frame by frame and is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from vafusion.errors import MediaError
from vafusion.inference.predictor import Prediction
from vafusion.io.atomic import atomic_path
from vafusion.io.video import iter_frames, video_start

MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"}
"""Audio codecs MP4 holds as they are (copied without re-encoding)."""
VALENCE_RGB, AROUSAL_RGB = (80, 160, 255), (255, 90, 90)
FONT = cv2.FONT_HERSHEY_SIMPLEX
TIME_BASE = Fraction(1, 90000)
PERSON_RGB = [(0, 220, 0), (255, 200, 0), (0, 200, 255), (255, 110, 230), (170, 255, 120), (255, 150, 60)]


@dataclass
class Shown:
    """One person as drawn: their label (empty for the one subject of ``--faces one``), per-frame values
    ``va`` (T, 2), face boxes (T, 4; left, top, right, bottom, NaN without a face) and colour."""

    label: str
    va: np.ndarray
    boxes: np.ndarray
    colour: tuple[int, int, int] = (0, 220, 0)


def shown_people(prediction: Prediction) -> list[Shown]:
    """The people of a prediction as the overlay draws them."""
    table, vf = prediction.table, prediction.features
    if "person" not in table:
        return [Shown("", table[["valence", "arousal"]].to_numpy(np.float64), vf.boxes)]
    out = []
    for rows in vf.people:
        mine = table[table["person"] == rows.person]
        colour = PERSON_RGB[rows.person % len(PERSON_RGB)]
        out.append(
            Shown(str(rows.person), mine[["valence", "arousal"]].to_numpy(np.float64), rows.boxes, colour)
        )
    return out


def _strip(img: np.ndarray) -> tuple[int, int, int]:
    """Darken the bottom strip; its top row, height and middle row."""
    h, w = img.shape[:2]
    sh = int(0.22 * h)
    y0 = h - sh
    img[y0:h] = (img[y0:h].astype(np.float32) * 0.35).astype(np.uint8)
    mid = y0 + sh // 2
    cv2.line(img, (0, mid), (w - 1, mid), (128, 128, 128), 1)
    return y0, sh, mid


def _draw_trace(
    img: np.ndarray, k: int, times: np.ndarray, people: list[Shown], u: float, history_s: float
) -> None:
    """The last ``history_s`` s of valence and arousal in a darkened strip along the bottom, with values."""
    w = img.shape[1]
    thick = max(1, round(2 * u))
    y0, sh, mid = _strip(img)
    lo = np.searchsorted(times, times[k] - history_s)
    seg_t = times[lo : k + 1]
    one = len(people) == 1 and not people[0].label
    if len(seg_t) > 1:
        xs = (w - 1) * (1 - (times[k] - seg_t) / history_s)
        for p in people:
            for col, colour, t in ((0, VALENCE_RGB, thick), (1, AROUSAL_RGB, max(1, thick // 2))):
                ys = mid - p.va[lo : k + 1, col] * (sh / 2 - 3)
                pts = np.stack([xs, ys], axis=1).round().astype(np.int32)
                cv2.polylines(
                    img, [pts], False, colour if one else p.colour, thick if one else t, cv2.LINE_AA
                )
    rows = (
        [
            (f"{n} {people[0].va[k, c]:+.2f}", rgb)
            for c, n, rgb in ((0, "valence", VALENCE_RGB), (1, "arousal", AROUSAL_RGB))
        ]
        if one
        else [(f"{p.label}: V {p.va[k, 0]:+.2f} A {p.va[k, 1]:+.2f}", p.colour) for p in people]
    )
    for row, (text, colour) in enumerate(rows):
        origin = (int(6 * u), y0 + int((16 + 18 * row) * u))
        cv2.putText(img, text, origin, FONT, 0.5 * u, colour, thick, cv2.LINE_AA)


def _draw_boxes(img: np.ndarray, k: int, people: list[Shown], u: float) -> None:
    """Each person's face box in frame ``k``; with several people, their number and live values above it."""
    thick = max(1, round(2 * u))
    for p in people:
        box = p.boxes[k]
        if not np.isfinite(box).all():
            continue
        x0, y0, x1, y1 = (int(c) for c in box)
        cv2.rectangle(img, (x0, y0), (x1, y1), p.colour, thick)
        if p.label:
            text = f"{p.label}  V{p.va[k, 0]:+.2f} A{p.va[k, 1]:+.2f}"
            cv2.putText(
                img,
                text,
                (x0, max(y0 - int(6 * u), int(12 * u))),
                FONT,
                0.45 * u,
                p.colour,
                thick,
                cv2.LINE_AA,
            )


def _draw_plane(img: np.ndarray, k: int, people: list[Shown], u: float) -> None:
    """The valence-arousal plane in the top right corner with each person's current value as a dot."""
    h, w = img.shape[:2]
    r = int(0.11 * min(h, w))
    cx, cy = w - r - int(10 * u), r + int(10 * u)
    cv2.circle(img, (cx, cy), r, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.line(img, (cx - r, cy), (cx + r, cy), (200, 200, 200), 1)
    cv2.line(img, (cx, cy - r), (cx, cy + r), (200, 200, 200), 1)
    cv2.putText(img, "V", (cx + r - int(12 * u), cy - 4), FONT, 0.4 * u, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(img, "A", (cx + 4, cy - r + int(12 * u)), FONT, 0.4 * u, (255, 255, 255), 1, cv2.LINE_AA)
    for p in people:
        v, a = float(p.va[k, 0]), float(p.va[k, 1])
        dot = (round(cx + v * r), round(cy - a * r))
        cv2.circle(img, dot, max(3, int(5 * u)), p.colour if p.label else (255, 220, 0), -1, cv2.LINE_AA)
        if p.label:
            cv2.putText(img, p.label, (dot[0] + 5, dot[1] - 5), FONT, 0.4 * u, p.colour, 1, cv2.LINE_AA)


def _draw_caption(img: np.ndarray, caption: str, u: float) -> None:
    """``caption`` in red on a dark band along the top (a demo or untrained model's outputs say so)."""
    scale, thick = 0.45 * u, max(1, round(u))
    (w, h), base = cv2.getTextSize(caption, FONT, scale, thick)
    shrink = min(1.0, (img.shape[1] - 12 * u) / max(w, 1))
    scale *= shrink
    band = int((h + base) * shrink + 10 * u)
    img[:band] = (img[:band].astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(
        img,
        caption,
        (int(6 * u), int(band - base * shrink - 4 * u)),
        FONT,
        scale,
        (255, 80, 80),
        thick,
        cv2.LINE_AA,
    )


def draw_overlay(
    image: np.ndarray,
    k: int,
    times: np.ndarray,
    people: list[Shown],
    history_s: float = 10.0,
    caption: str = "",
) -> np.ndarray:
    """Frame ``k`` with each person's face box, the last ``history_s`` s of valence/arousal, a VA-plane dot
    per person and, when given, a caption along the top."""
    img = image.copy()
    u = max(min(img.shape[:2]) / 480.0, 0.5)
    _draw_boxes(img, k, people, u)
    _draw_trace(img, k, times, people, u, history_s)
    _draw_plane(img, k, people, u)
    if caption:
        _draw_caption(img, caption, u)
    return img


class _AudioCopy:
    """Audio stream ``index`` of the source into the output (none where there is no such stream): packets
    copied, or decoded and re-encoded to AAC, moved by minus the video's start time as the frames are."""

    def __init__(self, src: Path, out: av.container.OutputContainer, index: int = 0) -> None:
        self.out = out
        self.input = av.open(str(src), metadata_errors="ignore")
        audio = self.input.streams.audio
        stream = audio[index] if 0 <= index < len(audio) else None
        self.start = video_start(self.input) or Fraction(0)
        self.packets: Iterator[av.Packet] | None = None
        self.pending: av.Packet | None = None
        if stream is not None and stream.codec_context.name in MP4_AUDIO:
            self.stream = out.add_stream_from_template(stream)
            self.packets = self._copy(stream)
        elif stream is not None:
            self.stream = out.add_stream(
                "aac", rate=48000, layout="stereo" if stream.channels > 1 else "mono"
            )
            self.packets = self._reencode(stream)

    def _copy(self, stream: av.audio.stream.AudioStream) -> Iterator[av.Packet]:
        """The stream's packets, moved; those that end before the first frame are dropped (one that ends
        on it, such as AAC's priming packet, stays)."""
        for p in self.input.demux(stream):
            if p.dts is None:
                continue
            if self.start and p.time_base is not None:
                ticks = round(self.start / p.time_base)
                p.dts -= ticks
                if p.pts is not None:
                    p.pts -= ticks
            at = p.pts if p.pts is not None else p.dts
            if at + (p.duration or 0) >= 0:
                yield p

    def _reencode(self, stream: av.audio.stream.AudioStream) -> Iterator[av.Packet]:
        """The stream decoded, moved and encoded to AAC; frames that end before the first frame are dropped
        (one that straddles it stays: MP4 plays from the first frame)."""
        resampler = av.AudioResampler(format="fltp", layout=self.stream.layout.name, rate=48000)
        try:
            for frame in self.input.decode(stream):
                for r in resampler.resample(frame):
                    if r.pts is not None and r.time_base is not None:
                        r.pts -= round(self.start / r.time_base)
                        if r.pts * r.time_base + Fraction(r.samples, r.sample_rate) <= 0:
                            continue
                    yield from self.stream.encode(r)
        except av.error.FFmpegError:
            pass
        yield from self.stream.encode(None)

    def mux_until(self, t_s: float) -> None:
        """Mux the audio packets that start at or before ``t_s`` seconds."""
        if self.packets is None:
            return
        while True:
            if self.pending is None:
                self.pending = next(self.packets, None)
                if self.pending is None:
                    return
            pt = self.pending.pts if self.pending.pts is not None else self.pending.dts
            if (
                pt is not None
                and self.pending.time_base is not None
                and float(pt * self.pending.time_base) > t_s
            ):
                return
            self.pending.stream = self.stream
            self.out.mux(self.pending)
            self.pending = None

    def close(self) -> None:
        """Close the source."""
        self.input.close()


def write_overlay(
    src: str | Path, prediction: Prediction, dst: str | Path, progress: bool = False, audio_stream: int = 0
) -> Path:
    """Write the overlay video of ``prediction`` (made from ``src`` with audio stream ``audio_stream``) to
    ``dst``; see the module docstring."""
    src, dst = Path(src), Path(dst)
    people = shown_people(prediction)
    vf = prediction.features
    times, n = vf.times, len(vf.times)
    if n == 0:
        raise MediaError(src, "no frames to draw on", "check that the file is a complete video")
    h, w = next(iter_frames(src)).image.shape[:2]
    ph, pw = h + h % 2, w + w % 2  # yuv420p needs even sizes
    rate = Fraction(vf.fps).limit_denominator(1001) if vf.fps > 0 else Fraction(30)
    with atomic_path(dst) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = pw, ph, "yuv420p"
        vs.time_base = vs.codec_context.time_base = TIME_BASE
        vs.options = {"crf": "20", "preset": "veryfast"}
        audio = _AudioCopy(src, out, audio_stream)
        try:
            last_pts = -1
            for frame in tqdm(
                iter_frames(src),
                total=n,
                desc=f"overlay {src.name}",
                unit="frame",
                disable=not progress,
                leave=False,
            ):
                k = min(frame.index, n - 1)
                img = draw_overlay(frame.image, k, times, people, caption=prediction.caption)
                if (ph, pw) != img.shape[:2]:
                    img = np.pad(img, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
                vframe = av.VideoFrame.from_ndarray(img, format="rgb24")
                last_pts = vframe.pts = max(round(times[k] / TIME_BASE), last_pts + 1)
                vframe.time_base = TIME_BASE
                for p in vs.encode(vframe):
                    out.mux(p)
                audio.mux_until(float(times[k]) + 1.0)
            for p in vs.encode(None):
                out.mux(p)
            audio.mux_until(math.inf)
        finally:
            audio.close()
    return dst
