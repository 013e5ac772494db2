"""Extractors: what turns face crops or a waveform into one feature row per annotation frame.

Two kinds share one small interface so the runner in ``extract.py`` needs no special cases:

* face extractors map aligned 112x112 RGB crops ``(N, 112, 112, 3) uint8`` to ``(N, D)``;
* audio extractors map a mono waveform and frame times ``(T,)`` to ``(T, D)`` plus a validity mask.

The paper's three streams are roles (``visual``, ``vggish``, ``logmel``); ``resolve_streams`` says which
extractor fills each role, using the offline stand-ins when published weights were not given.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from vafusion.cpu import choose_precision, cpu_info
from vafusion.errors import VafusionError
from vafusion.features import egemaps
from vafusion.features.face_encoder import BACKENDS, PRECISIONS, FaceEncoder, calibration_id
from vafusion.features.face_int8 import AUTO, OFF, calibration_crops, calibration_mode
from vafusion.features.face_int8 import RECIPE as INT8_RECIPE
from vafusion.features.landmarks import LandmarkExtractor
from vafusion.features.logmel import CentredExamples
from vafusion.features.timing import resample_rows
from vafusion.models.iresnet import canonical_arch
from vafusion.schema import AT_LEAST_1, NON_NEGATIVE, Rule, one_of, setting
from vafusion.weights import load_iresnet, load_vgg_logmel, load_vggish, sha256

ROLES = ("visual", "vggish", "logmel")
FACE_EXTRACTORS = ("iresnet", "landmarks")
AUDIO_EXTRACTORS = ("vggish", "egemaps", "logmel")
IRESNET_ARCH = Rule(
    "one of iresnet18, iresnet34, iresnet50, iresnet100 (or r18 ... r100)",
    lambda v: canonical_arch(v) is not None,
)


@dataclass
class FeaturesConfig:
    """Which extractor fills each of the paper's three streams, and the front-end weight files.

    ``auto`` picks the paper's front end when its weights are given and the offline stand-in otherwise
    (visual: iresnet | landmarks; vggish: vggish | egemaps; logmel: VGG encoder | log-mel statistics).
    """

    visual: str = setting("auto", one_of("auto", *FACE_EXTRACTORS))
    vggish: str = setting("auto", one_of("auto", *AUDIO_EXTRACTORS))
    logmel: str = setting("logmel", one_of(*AUDIO_EXTRACTORS))
    iresnet_arch: str = setting("iresnet50", IRESNET_ARCH)
    iresnet_weights: str | None = None
    vggish_weights: str | None = None
    vggish_pca: str | None = None
    logmel_weights: str | None = None
    face_batch: int = setting(32, AT_LEAST_1)
    # face path: auto = measured once per machine and remembered (docs/performance.md); or force one
    face_precision: str = setting("auto", one_of("auto", *PRECISIONS))
    face_backend: str = setting("auto", one_of("auto", *BACKENDS))
    # crops to calibrate int8 on: auto = extract samples 256 of the dataset's cropped_aligned crops and
    # keeps them in FEATS/face_calibration.npz (predict uses the run's copy); a folder of aligned 112x112
    # crops or an .npz; none = never int8 (docs/performance.md)
    face_calibration: str | None = AUTO
    # encode every k-th face, interpolate the rest (CCC cost: docs/performance.md)
    face_stride: int = setting(5, AT_LEAST_1)
    # s between encoded 0.96 s log-mel patches; 0: one per frame (docs/performance.md)
    audio_hop: float = setting(0.48, NON_NEGATIVE)

    def relations(self) -> list[tuple[str, bool, str]]:
        """int8 faces need calibration crops."""
        int8_ok = self.face_precision != "int8" or calibration_mode(self.face_calibration) != OFF
        return [("face_precision", int8_ok, "int8 only with features.face_calibration auto or a folder")]


class Extractor(Protocol):
    name: str
    modality: str
    dim: int
    params: dict

    @property
    def fingerprint(self) -> str: ...


@dataclass
class _Base:
    name: str
    modality: str
    dim: int
    params: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Changes whenever the output would change (extractor, parameters, weights file contents)."""
        blob = json.dumps({"name": self.name, "dim": self.dim, **self.params}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sha(path: str | None) -> str | None:
    return None if path is None else sha256(path)


class IResNetExtractor(_Base):
    """IResNet face embeddings (paper eq. 1), 512-d, from an arcface_torch ``backbone.pth``.

    Faces run on :class:`vafusion.features.face_encoder.FaceEncoder`: batched, ``inference_mode``, on the
    path measured fastest on this machine (remembered in the user cache): torch (fused oneDNN convolutions)
    in the best float precision the CPU runs natively (bf16 only with AVX512-BF16/AMX), ONNX Runtime fp32
    where it wins by 5 %, or int8 where it is 1.3x the float path and ``calibration`` crops are given (a
    folder or ``.npz``; ``auto`` and ``none`` give none here: ``vafusion extract`` and ``RunBundle`` turn
    ``auto`` into the stored set). The precision (and, for int8, the recipe and calibration set) enters the
    fingerprint; fp32 backends agree to 3e-6.
    """

    def __init__(
        self,
        arch: str,
        weights: str,
        batch: int = 32,
        precision: str = "auto",
        backend: str = "auto",
        calibration: str | np.ndarray | None = None,
    ) -> None:
        self.calibration = (
            calibration if isinstance(calibration, np.ndarray) else calibration_crops(calibration)
        )
        if precision == "int8" and self.calibration is None:
            raise VafusionError(
                None,
                "the int8 face path needs calibration crops, and none are at hand here",
                "set features.face_calibration to a folder of aligned face crops, or face_precision=auto",
            )
        self.net = load_iresnet(arch, weights).eval()
        self.batch = batch
        self.backend = backend
        params = {"arch": arch, "weights_sha256": _sha(weights)}
        self._key = (arch, params["weights_sha256"])
        self._encoder = None
        if precision == "auto" and self.calibration is not None:  # int8 may win: measure (once per machine)
            self._encoder = self._make_encoder("auto")
            precision = self._encoder.precision
        elif precision == "auto":
            precision = choose_precision(cpu_info())
        params["precision"] = precision
        if precision == "int8":
            params["int8"] = {"recipe": INT8_RECIPE, "calibration": calibration_id(self.calibration)}
        super().__init__("iresnet", "face", 512, params)

    @classmethod
    def from_config(cls, cfg: FeaturesConfig, calibration: np.ndarray | None = None) -> IResNetExtractor:
        """The extractor the ``features`` settings describe (weights, batch, precision, backend,
        calibration: ``calibration`` crops when given, else ``face_calibration``)."""
        return cls(
            cfg.iresnet_arch,
            cfg.iresnet_weights,
            cfg.face_batch,
            cfg.face_precision,
            cfg.face_backend,
            cfg.face_calibration if calibration is None else calibration,
        )

    def _make_encoder(self, precision: str) -> FaceEncoder:
        return FaceEncoder(self.net, self.batch, precision, self.backend, self._key, self.calibration)

    @property
    def encoder(self) -> FaceEncoder:
        """The ``FaceEncoder`` (built on first use; choosing a backend is measured once per machine)."""
        if self._encoder is None:
            self._encoder = self._make_encoder(self.params["precision"])
        return self._encoder

    def encode(self, crops: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 RGB -> (N, 512) float32."""
        return self.encoder(crops)


class LandmarksExtractor(_Base):
    """dlib 68-point landmarks on the aligned crop, normalised (offline stand-in for IResNet)."""

    def __init__(self) -> None:
        self.impl = LandmarkExtractor()
        super().__init__("landmarks", "face", int(self.impl.dim), dict(self.impl.params))

    def encode(self, crops: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 RGB -> (N, 136) float32."""
        return self.impl(crops)


class _CentredPatchExtractor(_Base, abc.ABC):
    """Audio extractors that encode 0.96 s log-mel patches and give one row per frame time.

    ``hop = 0`` encodes the patch centred at every frame time (the literal per-frame reading). ``hop > 0``
    encodes patches centred on a grid every ``hop`` seconds of the whole track (``origin + t`` a multiple of
    ``hop``) and interpolates them linearly to the frame times: a 0.48 s hop costs 1/14 of the per-frame
    work at 30 fps and no measurable CCC (``docs/performance.md``). The spectrogram is computed once per
    call and patches are encoded in chunks.
    """

    chunk = 512

    def __init__(self, name: str, params: dict, hop: float) -> None:
        if not hop >= 0 or not np.isfinite(hop):
            raise VafusionError(
                None,
                f"features.audio_hop must be >= 0 seconds, got {hop}",
                "set features.audio_hop=0.48 (the default) or 0 for one example per frame",
            )
        super().__init__(name, "audio", 128, {**params, "hop_s": float(hop)})
        self.hop = float(hop)

    @abc.abstractmethod
    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        """(n, 96, 64) -> (n, dim)."""

    def centres(self, times: np.ndarray, origin: float = 0.0) -> np.ndarray:
        """Times (s from the start of the wave) at which patches are encoded for these frame times."""
        times = np.asarray(times, np.float64)
        if self.hop == 0 or len(times) == 0:
            return times
        first = np.floor((times.min() + origin) / self.hop + 1e-9)
        last = np.ceil((times.max() + origin) / self.hop - 1e-9)
        return np.arange(first, last + 1) * self.hop - origin

    @torch.inference_mode()
    def at_times(
        self, wave: np.ndarray, sr: int, times: np.ndarray, origin: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Waveform + frame times (T,) s from the wave's start -> (T, dim), valid (T,).

        ``origin`` is the wave's start within the whole track (s), so that the hop grid of a chunk lines up
        with the grid of the whole file.
        """
        times = np.asarray(times, np.float64)
        at = self.centres(times, origin)
        examples = CentredExamples(wave, sr)
        feats = [
            self.encode_patches(examples(at[i : i + self.chunk])[0]) for i in range(0, len(at), self.chunk)
        ]
        out = np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, self.dim), np.float32)
        if self.hop and len(times):
            out = resample_rows(at, out, times)
        return out, centre_in_audio(wave, sr, times)


def _run_net(net: torch.nn.Module, patches: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate(
        [net(torch.from_numpy(patches[j : j + batch])).float().numpy() for j in range(0, len(patches), batch)]
    )


class VGGishExtractor(_CentredPatchExtractor):
    """VGGish embeddings (paper eq. 2) of 0.96 s examples centred at each frame time (or every ``hop`` s)."""

    def __init__(self, weights: str, pca: str | None = None, batch: int = 64, hop: float = 0.0) -> None:
        params = {
            "weights_sha256": _sha(weights),
            "pca_sha256": _sha(pca),
            "centre": "frame",
            "example_s": 0.96,
        }
        if pca is not None:  # forward applies the AudioSet post-processing (PCA, clip, 8 bits) then
            params["output"] = "pca_uint8"
        super().__init__("vggish", params, hop)
        self.net = load_vggish(weights, pca=pca).eval()
        self.batch = batch

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        return _run_net(self.net, patches, self.batch)


class EGeMAPSExtractor(_Base):
    """openSMILE eGeMAPSv02 low-level descriptors at each frame time (offline stand-in for VGGish)."""

    def __init__(self) -> None:
        self.impl = egemaps
        super().__init__("egemaps", "audio", int(egemaps.DIM), dict(getattr(egemaps, "PARAMS", {})))

    def at_times(
        self, wave: np.ndarray, sr: int, times: np.ndarray, origin: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Waveform + frame times (T,) -> (T, 25), valid (T,). openSMILE's descriptors come every 10 ms
        whatever the frame rate, so there is no hop to choose and ``origin`` is not needed."""
        return self.impl.egemaps_at(wave, sr, times)


class LogMelExtractor(_CentredPatchExtractor):
    """Paper eq. 3-4: the log-mel patch centred at each frame, encoded by a VGG-style network.

    With ``weights`` the patch goes through the VGG encoder (128-d). Without, the stand-in encoder is the
    per-band mean and standard deviation over the 0.96 s patch (64 + 64 = 128-d): same width, no weights.
    """

    def __init__(self, weights: str | None = None, batch: int = 64, hop: float = 0.0) -> None:
        encoder = "vgg" if weights else "stats"
        super().__init__(
            "logmel",
            {"encoder": encoder, "weights_sha256": _sha(weights), "centre": "frame", "example_s": 0.96},
            hop,
        )
        self.net = None
        if weights:
            self.net = load_vgg_logmel(weights).eval()
        self.batch = batch

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        if self.net is None:
            return np.concatenate([patches.mean(1), patches.std(1)], axis=1)
        return _run_net(self.net, patches, self.batch)


def centre_in_audio(wave: np.ndarray, sr: int, times: np.ndarray) -> np.ndarray:
    """A frame has audio when its time lies inside the track; windows reaching past an end are zero-padded.

    Marking only fully-covered windows valid would drop the first and last 0.48 s of every video.
    """
    return (times >= 0) & (times <= len(wave) / sr) & (len(wave) > 0)


def resolve_streams(cfg: FeaturesConfig) -> tuple[dict[str, str], list[str]]:
    """Map each role to an extractor name; the notes say which stand-ins replaced missing weights."""
    notes = []
    visual = cfg.visual
    if visual == "auto":
        visual = "iresnet" if cfg.iresnet_weights else "landmarks"
        if visual == "landmarks":
            notes.append(
                "visual: dlib 68-point landmarks stand in for IResNet-50 (no --iresnet-weights given)"
            )
    vggish = cfg.vggish
    if vggish == "auto":
        vggish = "vggish" if cfg.vggish_weights else "egemaps"
        if vggish == "egemaps":
            notes.append("vggish: openSMILE eGeMAPSv02 stands in for VGGish (no --vggish-weights given)")
    logmel = cfg.logmel
    if logmel == "logmel" and not cfg.logmel_weights:
        notes.append(
            "logmel: log-mel band mean/std over 0.96 s stands in for the VGG encoder (no --logmel-weights)"
        )
    streams = {"visual": visual, "vggish": vggish, "logmel": logmel}
    for role, name in streams.items():
        if name not in FACE_EXTRACTORS + AUDIO_EXTRACTORS:
            raise VafusionError(
                None,
                f"unknown extractor {name!r} for stream {role}",
                f"choose one of {', '.join(FACE_EXTRACTORS + AUDIO_EXTRACTORS)} or auto",
            )
    return streams, notes


def build_extractor(name: str, cfg: FeaturesConfig, calibration: np.ndarray | None = None):
    """Instantiate an extractor by name; weights come from ``cfg`` and are verified on load; ``calibration``
    crops (int8 IResNet) replace ``cfg.face_calibration``."""
    if name == "iresnet":
        if not cfg.iresnet_weights:
            raise VafusionError(
                None,
                "the iresnet extractor needs a weights file",
                "pass --iresnet-weights backbone.pth (insightface arcface_torch), or use landmarks",
            )
        return IResNetExtractor.from_config(cfg, calibration)
    if name == "landmarks":
        return LandmarksExtractor()
    if name == "vggish":
        if not cfg.vggish_weights:
            raise VafusionError(
                None,
                "the vggish extractor needs a weights file",
                "pass --vggish-weights vggish-10086976.pth (torchvggish release), or use egemaps",
            )
        return VGGishExtractor(cfg.vggish_weights, cfg.vggish_pca, hop=cfg.audio_hop)
    if name == "egemaps":
        return EGeMAPSExtractor()
    if name == "logmel":
        return LogMelExtractor(cfg.logmel_weights, hop=cfg.audio_hop)
    raise VafusionError(
        None, f"unknown extractor {name!r}", f"choose from {', '.join(FACE_EXTRACTORS + AUDIO_EXTRACTORS)}"
    )


def configured_extractor(name: str, cfg: FeaturesConfig, calibration: np.ndarray | None = None):
    """``build_extractor`` plus the run settings that change a face stream's rows (``face_stride``), which
    therefore enter its fingerprint. (Audio rows do not depend on how the track is chunked.)"""
    if cfg.face_stride < 1:
        raise VafusionError(
            None,
            f"features.face_stride must be >= 1, got {cfg.face_stride}",
            "set features.face_stride=1 (encode every face) or more",
        )
    ext = build_extractor(name, cfg, calibration)
    if ext.modality == "face" and cfg.face_stride > 1:
        ext.params = {**ext.params, "face_stride": cfg.face_stride}
    return ext
