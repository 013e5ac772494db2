"""The built-in synthetic corpus: Aff-Wild2-shaped data whose VA signal is known, for ``make demo`` and tests.

Real Aff-Wild2 cannot be shipped, yet every newcomer needs data on which the whole pipeline
(face crops -> features -> models -> CCC) runs and on which fusion measurably helps. This package
writes a small corpus in the Aff-Wild2 layout *as distributed*::

    OUT/videos/batch1/<name>.mp4                                  H.264 yuv420p + AAC (one without audio)
    OUT/cropped_aligned/<name>/00001.jpg ...                      112x112 ArcFace-aligned RGB crops
    OUT/annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<name>.txt
    OUT/synth_manifest.json                                       names, split, fps, awkward cases

Per video a smooth random ground-truth VA trajectory drives both modalities, each better at one
dimension, as in real data: the face (``face.py``, bases in ``expression.py``) shows valence
strongly and arousal weakly, the voice (``voice.py``) the reverse. ``plan.py`` draws what each video
holds, ``scene.py`` its people and background, ``video.py`` renders it and ``corpus.py`` writes the
whole corpus. Per-video nuisance (face shape, mirroring, tint, scale, position, head motion,
background, speaker pitch and vocal tract, recording level, background noise at a random SNR) makes a
model generalise across videos. The real data's awkward cases are present and listed in the manifest;
see ``docs/synthetic_data.md``.
"""

from vafusion.data.synth.corpus import main, make_corpus
from vafusion.data.synth.face import render_face
from vafusion.data.synth.plan import (
    ANNOTATION_DIR,
    CROP_DIR,
    FPS,
    MANIFEST,
    SAMPLE_RATE,
    VIDEO_DIR,
    VideoSpec,
    plan_videos,
)
from vafusion.data.synth.voice import synth_voice

__all__ = [
    "ANNOTATION_DIR",
    "CROP_DIR",
    "FPS",
    "MANIFEST",
    "SAMPLE_RATE",
    "VIDEO_DIR",
    "VideoSpec",
    "main",
    "make_corpus",
    "plan_videos",
    "render_face",
    "synth_voice",
]
