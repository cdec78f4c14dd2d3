"""Volume input/output that never loses a scan's geometry."""

from medhdiff.io.atomic import atomic_path, check_output_path, full_suffix, stem
from medhdiff.io.paths import expand_inputs, guess_contrast, output_path, select_shard
from medhdiff.io.readers import IMAGE_SUFFIXES, format_of, load_volume, save_volume
from medhdiff.io.volume import Volume, is_oblique

__all__ = [
    "IMAGE_SUFFIXES",
    "Volume",
    "atomic_path",
    "check_output_path",
    "expand_inputs",
    "format_of",
    "full_suffix",
    "guess_contrast",
    "is_oblique",
    "load_volume",
    "output_path",
    "save_volume",
    "select_shard",
    "stem",
]
