"""napari-vdir: Variational Deep Image Restoration (Soh & Cho, IEEE TIP 2022) for napari and Python.

``restore`` is the entry point; torch loads only when it is first called, so importing the
package (and the napari plugin) stays cheap.
"""

from __future__ import annotations

__all__ = ["restore", "Restoration", "RestorationCancelled", "WeightsError", "list_models"]

from napari_vdir import _moved
from napari_vdir._version import __version__ as __version__

_moved.install()  # module names of earlier releases (napari_vdir.api, ...) still import


def __getattr__(name):
    if name in ("restore", "Restoration"):
        from napari_vdir.core import api

        return getattr(api, name)
    if name == "RestorationCancelled":
        from napari_vdir.core.inference import RestorationCancelled

        return RestorationCancelled
    if name == "WeightsError":
        from napari_vdir.core.weights import WeightsError

        return WeightsError
    if name == "list_models":
        from napari_vdir.core.models import list_models

        return list_models
    raise AttributeError(f"module 'napari_vdir' has no attribute {name!r}")
