"""The ``edgeexit`` command: a thin layer over the Python API.

Commands import their heavy dependencies only when they run, so ``edgeexit verify`` works on a
device that has no torch. Every ``EdgeExitError`` is printed as one line and exits with status 1;
nothing prints a traceback for a mistake the user can fix.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from edgeexit.cli import (
    bench_commands,
    daemon_commands,
    decoder_commands,
    device_commands,
    package_commands,
    profile_commands,
    quantize_commands,
    server_commands,
    workstation_commands,
)
from edgeexit.console import err_console
from edgeexit.errors import EdgeExitError

app = typer.Typer(
    name="edgeexit",
    help="Early-exit neural networks from the workstation to edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
workstation_commands.register(app)
package_commands.register(app)
device_commands.register(app)
server_commands.register(app)
profile_commands.register(app)
daemon_commands.register(app)
decoder_commands.register(app)
bench_commands.register(app)
quantize_commands.register(app)


#: Which extra brings a module a command may miss (the rest come with [device]).
_EXTRA_OF = {
    "torch": "export",
    "onnx": "export",
    "onnxscript": "export",
    "matplotlib": "plots",
    "sklearn": "data",
    "mlxtend": "data",
    "grpc": "device",  # the offload client; [server] brings it too, with the next two
    "google": "device",  # protobuf
    "grpc_health": "server",
    "grpc_reflection": "server",
    "prometheus_client": "server",
    "tokenizers": "text",
    "ai_edge_litert": "tflite",
    "litert_torch": "tflite-export",
    "transformers": "models",
}


def main() -> None:
    try:
        app()
    except EdgeExitError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except ModuleNotFoundError as err:
        extra = _EXTRA_OF.get((err.name or "").split(".")[0], "device")
        err_console.print(
            "[bold red]error:[/] "
            + escape(
                f"this command needs the Python module {err.name!r}, which is not installed; "
                f"install the extra that provides it: pip install -c constraints.txt 'edgeexit[{extra}]'"
            ),
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
    except OSError as err:  # a path the user gave: missing, not a directory, no permission, disk full
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(1)
