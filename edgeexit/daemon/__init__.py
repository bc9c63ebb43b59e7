"""The device daemon behind ``edgeexit device --config device.toml``: a local KServe v2 API for
applications over one package, offloading as configured, with SIGHUP reloads and SIGTERM drains.

``config`` (device.toml), ``runner`` (one loaded config: Engine + offload runner + worker),
``service`` (the v2 calls and the response contract), ``app`` (the process: signals, logs,
metrics). Never imports torch, onnx or edgeexit.compile; nor ``edgeexit.server`` (which needs
grpc-health and prometheus-client, absent from ``[device]``).
"""

from edgeexit.daemon.config import ConfigError, DaemonConfig, load_config

__all__ = ["ConfigError", "DaemonConfig", "load_config"]
