"""Device side: run packages with ONNX Runtime. Never imports torch or onnx.

from edgeexit.runtime import Engine
engine = Engine("pkg/", threads=1)
result = engine.run(x)           # one sample -> Result
results = engine.run_batch(xs)   # early exits retired per sample, input order
"""

from edgeexit.runtime.engine import Engine, ExitRule, FullDepth, Result
from edgeexit.runtime.verify import VerifyReport, verify_package

__all__ = ["Engine", "ExitRule", "FullDepth", "Result", "VerifyReport", "verify_package"]
