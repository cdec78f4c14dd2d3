"""The jobs users run: denoise, reconstruct, detect (through :class:`Predictor`)."""

from medhdiff.tasks.adapt import AdaptConfig
from medhdiff.tasks.predictor import Predictor, default_weights, guess_contrast
from medhdiff.tasks.results import DenoiseResult, DetectResult, ReconstructResult

__all__ = ["AdaptConfig", "DenoiseResult", "DetectResult", "Predictor", "ReconstructResult", "default_weights", "guess_contrast"]
