"""The ``resdyn`` command. Subcommands live in their own modules and load on first use."""

from __future__ import annotations

import importlib
import importlib.util

import click

__all__ = ["main"]

# name -> "module:attribute"; a command whose module is not installed is not listed.
COMMANDS: dict[str, str] = {
    "demo": "resdyn.cli.demo:demo",
    "data": "resdyn.cli.data:data",
    "run": "resdyn.cli.sweep:run",
    "results": "resdyn.cli.sweep:results",
    "status": "resdyn.cli.sweep:status",
    "bound": "resdyn.cli.bound:bound",
    "certify": "resdyn.cli.certify:certify",
    "reproduce": "resdyn.cli.reproduce:reproduce",
    "report": "resdyn.cli.report:report",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, target in COMMANDS.items() if _available(target))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None or not _available(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


def _available(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="resdyn")
def main() -> None:
    """resdyn: deep residual and dense networks as dynamical systems, and their generalization."""
