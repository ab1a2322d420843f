"""Export to other tools: a bare ONNX file or a bioimage.io model package, built on the core's networks and
weights (:mod:`.package`). Imported by the command line only; the core never imports it."""

from napari_vdir.export.package import FORMATS, ExportError, export_model

__all__ = ["FORMATS", "ExportError", "export_model"]
