"""Device side: run packages with ONNX Runtime. Never imports torch, onnx or grpc.

from edgeexit.runtime import Engine
engine = Engine("pkg/", threads=1)
result = engine.run(x)           # one sample -> Result
results = engine.run_batch(xs)   # early exits retire per sample, input order

Split at boundary k (what edgeexit.device's offloading builds on):
state = engine.run_until(x, k)   # a Result (exited at or before k) or a Pending (k's hidden tensor)
result = engine.resume(state)    # finish here: the same Result run() gives
"""

from edgeexit.runtime.engine import BatchProgress, Engine, ExitRule, FullDepth, OffloadInfo, Pending, Result
from edgeexit.runtime.settings import EngineSettings
from edgeexit.runtime.verify import VerifyReport, verify_package

__all__ = [
    "BatchProgress",
    "Engine",
    "EngineSettings",
    "ExitRule",
    "FullDepth",
    "OffloadInfo",
    "Pending",
    "Result",
    "VerifyReport",
    "verify_package",
]
