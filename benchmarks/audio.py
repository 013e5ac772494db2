"""Audio front ends: seconds of audio per second, % of the convolution peak, and the CCC cost of a hop.

    .venv/bin/python benchmarks/audio.py            # speed + CCC vs hop (CCC part needs runs/demo)
    .venv/bin/python benchmarks/audio.py --quick    # 2 rounds instead of 3

Speed (random fixed-seed weights: speed does not depend on values; absorbs the earlier
``frontends_speed.py``):

* log-mel front end (resample + STFT + mel) from 44.1 kHz and from 16 kHz;
* ``VGGishExtractor.at_times`` (the pipeline's path: one 0.96 s example centred at each time, network
  in batches) at hops 0.96 s, 0.48 s, 0.24 s and 1/fps, with its GFLOP/s against the fastest bare fp32
  3x3 convolution of VGGish's shapes;
* ``LogMelExtractor.at_times`` without weights (the stand-in: band mean/std) at 1/fps.

CCC vs hop: the demo's logmel stream is recomputed at each hop (``LogMelExtractor.at_times`` at times
0, h, 2h, ...), interpolated linearly to the frame times (``features.audio_hop``) and scored by
the trained logmel and fusion fold models on their held-out folds.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import DEMO, DemoEval, Section, demo_ready, load_text, race, table
from face_encoding import count_macs
from torch import nn

from vafusion.features.extractors import LogMelExtractor, VGGishExtractor
from vafusion.features.logmel import log_mel_spectrogram
from vafusion.models.vggish import VGGish

FPS = 30.0
HOPS = ((0.96, "0.96 s"), (0.48, "0.48 s"), (0.24, "0.24 s"), (1 / FPS, "1/fps (30 fps)"))
TOLERANCE = 0.002
VGG_SHAPES = ((64, 96, 64), (128, 48, 32), (256, 24, 16), (512, 12, 8))


def _vggish_extractor(tmp: Path) -> VGGishExtractor:
    """The real extractor class, loading a fixed-seed random VGGish checkpoint."""
    torch.manual_seed(0)
    path = tmp / "vggish-random.pth"
    torch.save(VGGish().state_dict(), path)
    return VGGishExtractor(str(path))


def _conv_peak(batch: int = 64) -> tuple[float, list[list[object]], str]:
    """Fastest fp32 channels-last bare 3x3 convolution over VGGish's stage shapes, GFLOP/s."""
    cands = {}
    for c, h, w in VGG_SHAPES:
        conv = nn.Conv2d(c, c, 3, padding=1).eval().to(memory_format=torch.channels_last)
        x = torch.randn(batch, c, h, w).contiguous(memory_format=torch.channels_last)

        def run(conv=conv, x=x) -> None:
            with torch.inference_mode():
                conv(x)

        cands[f"conv {c}x{h}x{w}"] = (run, 2 * batch * c * c * 9 * h * w / 1e9)
    res = race(cands, 3)
    rates = {k: res.median(k) for k in cands}
    best = max(rates, key=rates.get)
    return rates[best], [[k, f"{v:.0f}"] for k, v in rates.items()], best


def speed(rounds: int) -> tuple[list[str], dict]:
    """Throughput table of the audio front ends."""
    rng = np.random.default_rng(0)
    secs = 6.0
    wave44 = rng.uniform(-0.5, 0.5, int(secs * 44100)).astype(np.float32)
    wave16 = rng.uniform(-0.5, 0.5, int(secs * 16000)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        vgg = _vggish_extractor(Path(tmp))
    gflop_example = 2 * count_macs(vgg.net, torch.zeros(1, 1, 96, 64)) / 1e9
    stats = LogMelExtractor()
    cands = {
        "log-mel front end from 44.1 kHz": (lambda: log_mel_spectrogram(wave44, 44100), secs),
        "log-mel front end from 16 kHz": (lambda: log_mel_spectrogram(wave16, 16000), secs),
    }
    for hop, label in HOPS:
        times = np.arange(0.0, secs, hop)
        cands[f"VGGish, hop {label}"] = (lambda t=times: vgg.at_times(wave44, 44100, t), secs)
    cands["LogMel stats stand-in, hop 1/fps"] = (
        lambda: stats.at_times(wave44, 44100, np.arange(0, secs, 1 / FPS)),
        secs,
    )
    res = race(cands, rounds)
    peak, conv_rows, peak_name = _conv_peak()
    base = f"VGGish, hop {HOPS[-1][1]}"
    rows = []
    for name in cands:
        r = res.median(name)
        extra = ["—", "—"]
        if name.startswith("VGGish"):
            hop = next(h for h, label in HOPS if name.endswith(label))
            gflops = r / hop * gflop_example
            extra = [f"{gflops:.0f}", f"{100 * gflops / peak:.0f} %"]
        ratio = f"{res.ratio(name, base):.1f}x" if name.startswith("VGGish") else "—"
        rows.append([name, f"{r:.1f}", ratio, *extra])
    md = [
        f"Seconds of audio processed per second of wall time (6 s of noise at 44.1 kHz unless noted; "
        f"medians of {rounds} interleaved rounds, {res.load_range()}). VGGish costs "
        f"{gflop_example:.2f} GFLOP per 0.96 s example (counted), so its cost scales with 1/hop; "
        f"peak = `{peak_name}` fp32 channels-last at {peak:.0f} GFLOP/s.",
        "",
        table(["front end", "s audio / s", "× VGGish at 1/fps", "GFLOP/s", "% of fp32 conv peak"], rows),
        "",
        "Bare convolutions (3x3, batch 64, fp32, channels-last), GFLOP/s:",
        "",
        table(["convolution", "GFLOP/s"], conv_rows),
    ]
    data = {"rates": res.rates, "loads": res.loads, "gflop_per_example": gflop_example, "peak_gflops": peak}
    return md, data


def hop_transform(audio: dict, hop: float):
    """Sequence transform: the logmel stream as ``features.audio_hop = hop`` extraction computes it (the
    0.96 s patches on a grid every ``hop`` s, interpolated to the frames; 1/fps: one patch per frame)."""
    extractor = LogMelExtractor(hop=0.0 if hop == 1 / FPS else hop)

    def transform(seq):
        wave, sr, times = audio[seq.name]
        if wave is None:
            return seq
        feats, _ = extractor.at_times(wave, sr, times)
        return replace(seq, feats={**seq.feats, "logmel": feats})

    return transform


def ccc_vs_hop() -> tuple[list[str], dict]:
    """CCC of the logmel and fusion models per logmel hop on the demo's held-out folds."""
    from vafusion.features.store import feature_path, read_features
    from vafusion.io.video import read_audio

    ev = DemoEval()
    corpus_videos = {p.stem: p for p in (DEMO / "data" / "videos").rglob("*") if p.suffix in (".mp4", ".avi")}
    audio, check, stored_hop = {}, 0.0, 0.0
    for name, seq in ev.seqs.items():
        ff = read_features(feature_path(DEMO / "features", ev.streams["logmel"], name))
        stored_hop = float(ff.meta.get("params", {}).get("hop_s", 0.0))
        ext = LogMelExtractor(hop=stored_hop)
        got = read_audio(corpus_videos[seq.video_id], sample_rate=None)
        times = ff.times[: seq.length]
        if got is None or got[0].size == 0:
            audio[name] = (None, 0, times)
            continue
        audio[name] = (got[0], got[1], times)
        again, _ = ext.at_times(got[0], got[1], times)
        check = max(check, float(np.abs(again - ff.features[: len(times)]).max()))
    scores = {m: {} for m in ("logmel", "fusion")}
    for hop, label in HOPS:
        tr = hop_transform(audio, hop)
        for m in scores:
            scores[m][label] = ev.score(m, tr)
    base = HOPS[-1][1]
    rows = [
        [
            label,
            f"{scores['logmel'][label]['P']:.4f}",
            f"{scores['logmel'][label]['P'] - scores['logmel'][base]['P']:+.4f}",
            f"{scores['fusion'][label]['P']:.4f}",
            f"{scores['fusion'][label]['P'] - scores['fusion'][base]['P']:+.4f}",
        ]
        for _, label in HOPS
    ]
    ok = [
        (hop, label)
        for hop, label in HOPS
        if all(scores[m][base]["P"] - scores[m][label]["P"] <= TOLERANCE for m in scores)
    ]
    pick = max(ok)[1]
    md = [
        "CCC vs hop on the held-out folds of `runs/demo`, scored by the demo's trained models "
        "(logmel stream = the weight-free band statistics; recomputing with the store's own hop, "
        f"{stored_hop:g} s, reproduces the stored features to {check:.1e}; Δ vs 1/fps):",
        "",
        table(["hop", "logmel P", "Δ logmel", "fusion P", "Δ fusion"], rows),
        "",
        f"Largest hop costing at most {TOLERANCE} P on both models: **{pick}** ({load_text()} when done).",
    ]
    return md, {"scores": scores, "pick": pick, "reproduction_max_abs": check}


def run(rounds: int = 3) -> Section:
    md, data = speed(rounds)
    why = demo_ready()
    if why:
        md += ["", f"CCC vs hop skipped: {why}."]
    else:
        md2, data2 = ccc_vs_hop()
        md += ["", *md2]
        data["ccc_vs_hop"] = data2
    return Section("Audio front ends (VGGish, log-mel)", "\n".join(md), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 3")
    print(run(2 if parser.parse_args().quick else 3).markdown)


if __name__ == "__main__":
    main()
