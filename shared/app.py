"""The Typer app factory with geomlab's error handling (kept apart from shared.cli, which mounts the projects)."""
from __future__ import annotations

import typer
from typer.core import TyperGroup

from shared.errors import UsageError


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished work (snapshots, statistics) is kept; re-run the same command to "
                       "continue", err=True)
            raise typer.Exit(130) from None


def make_app(help: str, **kwargs) -> typer.Typer:
    """A Typer app with geomlab's error handling; use it for every project sub-app."""
    return typer.Typer(help=help, cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False,
                       add_completion=False, **kwargs)
