"""The Typer app factory with geomlab's error handling and option conventions (imports no project code).

Every command made through :func:`make_app` gets:

- ``error: <message>`` on stderr and exit code 2 for :class:`~shared.errors.UsageError` (no traceback), exit code
  130 for Ctrl-C and 143 for SIGTERM (stop requests, honoured at the command's safe points: :mod:`shared.interrupts`);
  a bad command line (unknown option, bad value, missing argument) is one line too,
  ``error: <click's message> (see 'geomlab <command> --help')``, without Rich panels (nor Rich's import time);
- hidden aliases: the first long name of an option is the one shown in ``--help`` and seen by ``geomlab sweep``;
  further long names (old spellings such as ``--noisy`` for ``--noise``) are still accepted but not shown;
- value aliases (:data:`shared.options.VALUE_ALIASES`, e.g. ``--cuda`` for ``--device cuda``), also hidden;
- ``--flag=true|false`` for every on/off option (how MLproject entry points pass them: ``-P flag=true``).
"""
from __future__ import annotations

import sys

import typer
from typer._click.exceptions import BadOptionUsage, ClickException, NoArgsIsHelpError, NoSuchOption
from typer.core import TyperCommand, TyperGroup

from shared.errors import UsageError

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def _long(opt: str) -> bool:
    return opt.startswith("--")


class GeomlabCommand(TyperCommand):
    """A command whose options have one visible name each (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from shared.options import VALUE_ALIASES

        taken = {o for p in self.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
        self.aliases: list[tuple] = []  # (param, opts, const or None)
        for p in self.params:
            if not isinstance(p, typer.core.TyperOption):
                continue
            longs = [o for o in p.opts if _long(o)]
            if len(longs) > 1:
                p.opts = [o for o in p.opts if o not in longs[1:]]
                self.aliases.append((p, longs[1:], None))
            for flag, value in VALUE_ALIASES.get(p.name, {}).items():
                if flag not in taken:
                    self.aliases.append((p, [flag], value))

    def make_parser(self, ctx):
        parser = super().make_parser(ctx)
        for p, opts, const in self.aliases:
            if const is not None:
                parser.add_option(obj=p, opts=opts, dest=p.name, action="store_const", const=const)
            elif p.is_flag:
                parser.add_option(obj=p, opts=opts, dest=p.name, action="store_const",
                                  const=True if p.is_bool_flag else p.flag_value)
            else:
                parser.add_option(obj=p, opts=opts, dest=p.name, action="append" if p.multiple else "store",
                                  nargs=p.nargs)
        return parser

    def parse_args(self, ctx, args):
        flags = {}
        for p in self.params:
            if getattr(p, "is_bool_flag", False):
                for o in p.opts:
                    flags[o] = (o, p.secondary_opts[0] if p.secondary_opts else None)
                for o in p.secondary_opts:
                    flags[o] = (o, p.opts[0])
        for p, opts, const in self.aliases:
            if const is None and getattr(p, "is_bool_flag", False):
                for o in opts:
                    flags[o] = (o, p.secondary_opts[0] if p.secondary_opts else None)
        out = []
        for a in args:
            name, eq, value = a.partition("=")
            if eq and name in flags:
                v = value.strip().lower()
                if v not in TRUE + FALSE:
                    raise BadOptionUsage(name, f"{name} is an on/off option; give {name}=true or {name}=false, "
                                               f"got {a!r}", ctx=ctx)
                on, off = flags[name]
                chosen = on if v in TRUE else off
                if chosen is not None:
                    out.append(chosen)
                continue
            out.append(a)
        try:
            return super().parse_args(ctx, out)
        except NoSuchOption as e:  # suggest visible names only
            hidden = {o for _, opts, _ in self.aliases for o in opts}
            e.possibilities = [o for o in (e.possibilities or []) if o not in hidden]
            raise


class _Group(TyperGroup):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as e:  # `geomlab` alone: the help, as before
            e.show()
            sys.exit(e.exit_code)
        except ClickException as e:  # the command line itself: one line, the way to the help
            ctx = getattr(e, "ctx", None)
            see = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{see}", err=True)
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)  # typer.Exit(n) returns n here

    def invoke(self, ctx):
        from shared import interrupts

        interrupts.install()  # Ctrl-C / SIGTERM request a stop that the command honours at its safe points
        try:
            return super().invoke(ctx)
        except UsageError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM at a safe point (shared.interrupts): exit 130 / 143
            from shared.interrupts import exit_code, signal_name

            typer.echo(f"interrupted ({signal_name(e)}): finished work (snapshots, statistics) is kept; re-run the "
                       "same command to continue", err=True)
            raise typer.Exit(exit_code(e)) from None


class App(typer.Typer):
    """A Typer app whose commands are :class:`GeomlabCommand` unless told otherwise."""

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", GeomlabCommand)
        return super().command(*args, **kwargs)


def make_app(help: str, **kwargs) -> typer.Typer:
    """A Typer app with geomlab's error handling; use it for every project sub-app."""
    return App(help=help, cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False,
               add_completion=False, **kwargs)
