"""On-device export (ONNX Runtime, ExecuTorch, Core ML): graph rewrites that keep the U-Net's numbers but use
operators mobile delegates take. ``dreamlite.export.onnx`` exports a pipeline to ONNX and runs it on onnxruntime
(``dreamlite export onnx``, ``--backend onnx``); ``dreamlite.export.executorch`` does the same with ExecuTorch
programs lowered to XNNPACK (``dreamlite export executorch``, ``--backend executorch``), reusing the ONNX
backend's adapters; ``dreamlite.export.coreml`` converts the U-Net to a Core ML package (``dreamlite export
coreml``; prediction needs macOS)."""

from dreamlite.export.graph import export_friendly

__all__ = ["export_friendly"]
