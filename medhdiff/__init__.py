"""medhdiff: a hierarchical 3D diffusion toolkit for brain MRI."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("medhdiff")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
