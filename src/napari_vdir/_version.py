"""The package version, in one place: ``napari_vdir.__version__``, the wheel's metadata (hatch reads this file)
and the bioimage.io packages' version (:mod:`napari_vdir.export.package`)."""

__version__ = "0.1.0"
