"""The device daemon behind ``edgeexit device --config device.toml``: a local KServe v2 API for
applications over one package, offloading as configured, with SIGHUP reloads and SIGTERM drains.

``config`` (device.toml), ``runner`` (one loaded config: Engine + offload runner + worker),
``service`` (the v2 calls and the response contract), ``logs`` (JSON event lines), ``metrics``
(Prometheus), ``app`` (the process: listening, signals, reloads, drains). The v2 protocol
itself is ``edgeexit.kserve``, shared with ``edgeexit serve``. Never imports torch, onnx or
edgeexit.compile; nor ``edgeexit.server`` (tails, batching, and the grpc-health that
``[device]`` does not install).
"""

from edgeexit.daemon.config import DaemonConfig, load_config
from edgeexit.errors import ConfigError

__all__ = ["ConfigError", "DaemonConfig", "load_config"]
