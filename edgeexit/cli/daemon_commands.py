"""``edgeexit device --config device.toml``: the device daemon (edgeexit.daemon). No torch.

When it listens it prints ``edgeexit device: listening on ADDRESS`` to stderr; SIGHUP reloads
the config and package without dropping requests; SIGTERM or SIGINT drains and exits 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("device")(device)


def device(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="The daemon's TOML config (see device/device.toml)."),
    ],
) -> None:
    """Run the device daemon: a local KServe v2 API over one package, offloading as configured."""
    from edgeexit.daemon.app import DeviceDaemon
    from edgeexit.daemon.logs import configure_logging

    daemon = DeviceDaemon(config)  # a config error is one line and status 1, before anything binds
    configure_logging(daemon.config.log_format, daemon.config.log_level)
    raise typer.Exit(daemon.run())
