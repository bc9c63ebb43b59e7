"""gRPC server reflection over two descriptor pools.

edgeexit's messages live in a private pool (``edgeexit.transport.generated._pool.POOL``, see
tools/generate_protos.py) while grpc_health and grpc_reflection register theirs in protobuf's
default pool. Reflection looks names up in one pool, so it gets a view that tries the private
pool first and then the default one: ``grpcurl list`` and ``describe`` then work for the v2
service and for the health and reflection services alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection

from edgeexit.transport.generated._pool import POOL


class ChainedPool:
    """The ``Find*`` methods of several descriptor pools, first hit wins (KeyError when none has it)."""

    def __init__(self, pools: Sequence[descriptor_pool.DescriptorPool]) -> None:
        self._pools = tuple(pools)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if not name.startswith("Find"):
            raise AttributeError(name)

        def find(*args: Any) -> Any:
            for pool in self._pools:
                try:
                    return getattr(pool, name)(*args)
                except KeyError:
                    continue
            raise KeyError(args[0] if args else name)

        return find


def enable_reflection(server: grpc.aio.Server, services: Sequence[str]) -> None:
    names = (*services, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=ChainedPool([POOL, descriptor_pool.Default()]))
