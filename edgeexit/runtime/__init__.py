"""Device side: run packages with ONNX Runtime. Never imports torch or onnx."""

from edgeexit.runtime.verify import VerifyReport, verify_package

__all__ = ["VerifyReport", "verify_package"]
