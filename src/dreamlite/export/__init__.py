"""On-device export (ONNX Runtime, ExecuTorch, Core ML): graph rewrites that keep the U-Net's numbers but use
operators mobile delegates take. ``dreamlite.export.onnx`` exports a pipeline to ONNX and runs it on onnxruntime
(``dreamlite export onnx``, ``--backend onnx``); ExecuTorch and Core ML exporters are the export issue's open work."""

from dreamlite.export.graph import export_friendly

__all__ = ["export_friendly"]
