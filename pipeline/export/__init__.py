"""Export of plain and adapted ViTs to deployable formats."""

from pipeline.export.onnx import export_onnx

__all__ = ["export_onnx"]
