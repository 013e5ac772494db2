"""The one place that reads weight files.

* :mod:`.files`: safe reading (never runs code from a file) and strict key-by-key checks, with where each
  published file comes from;
* :mod:`.frontends`: VGGish (+ PCA), the VGG log-mel encoder and ArcFace IResNets from their published
  checkpoints;
* :mod:`.dlib`: dlib's face detector, shape predictors and face descriptor from ``face-recognition-models``;
* :mod:`.checkpoints`: vafusion's own trained models.
"""

from vafusion.weights.checkpoints import load_checkpoint, save_checkpoint
from vafusion.weights.files import PUBLISHED, Published, guess_architecture, read_weights, sha256
from vafusion.weights.frontends import load_iresnet, load_vgg_logmel, load_vggish, load_vggish_pca

__all__ = [
    "PUBLISHED",
    "Published",
    "guess_architecture",
    "load_checkpoint",
    "load_iresnet",
    "load_vgg_logmel",
    "load_vggish",
    "load_vggish_pca",
    "read_weights",
    "save_checkpoint",
    "sha256",
]
