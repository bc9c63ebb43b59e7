"""The device side of split inference: run the first segments here, offload the tail.

from edgeexit.device import OffloadRunner, TailClient
from edgeexit.runtime import Engine

engine = Engine("pkg/")
with TailClient(["10.0.0.5:8001", "10.0.0.6:8001"], timeout_s=0.2) as client:
    runner = OffloadRunner(engine, client, split=1, codec="fp16")
    result = runner.run(x)            # result.offload: server, bytes_sent, transfer_ms, fallback, reason
    results = runner.run_batch(xs)    # the survivors at the split travel in one request

Never imports torch, onnx or edgeexit.compile.
"""

from edgeexit.device.offload import OffloadRunner
from edgeexit.device.tails import select_tail
from edgeexit.errors import OffloadError
from edgeexit.runtime.engine import OffloadInfo
from edgeexit.transport.client import TailClient, TailReply, TlsConfig

__all__ = ["OffloadError", "OffloadInfo", "OffloadRunner", "TailClient", "TailReply", "TlsConfig", "select_tail"]
