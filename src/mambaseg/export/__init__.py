"""Export of trained (or freshly built) models to deployment formats: ONNX with an onnxruntime parity check."""

from __future__ import annotations

from mambaseg.export.onnx import (
    NATIVE_INPUT,
    ExportReport,
    export_metadata,
    export_onnx,
    load_for_export,
    native_input_shape,
)

__all__ = ["NATIVE_INPUT", "ExportReport", "export_metadata", "export_onnx", "load_for_export", "native_input_shape"]
