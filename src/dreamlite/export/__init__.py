"""On-device export (ONNX Runtime, ExecuTorch, Core ML): graph rewrites that keep the U-Net's numbers but use
operators mobile delegates take. The exporters themselves are the export issue's work in progress."""

from dreamlite.export.graph import export_friendly

__all__ = ["export_friendly"]
