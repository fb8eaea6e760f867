"""Shared CLI machinery: the error decorator, record rendering, common options.

After dandi-cli's ``cli/base.py``: bidspack errors become one clean ``Error:`` line
and a non-zero exit; ``--debug`` (or ``BIDSPACK_DEBUG=1``) lets the traceback through.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from bidspack.errors import BidspackError
from bidspack.records import Record, count_statuses

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True)
STATUS_STYLE = {"ok": "green", "notneeded": "dim", "impossible": "yellow", "error": "bold red"}


def debug_enabled() -> bool:
    """True when tracebacks should be shown (``--debug`` or ``BIDSPACK_DEBUG=1``)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    flag = bool(root and root.obj and root.obj.get("debug"))
    return flag or os.environ.get("BIDSPACK_DEBUG") == "1"


def map_errors(func: F | None = None, *, exit_code: int | None = None) -> Any:
    """Turn :class:`BidspackError` and :class:`OSError` into ``Error: <path>: <reason>``
    and a non-zero exit (the error's own code, or *exit_code* when given).

    Usable bare (``@map_errors``) or with arguments (``@map_errors(exit_code=2)``).
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except BidspackError as exc:
                if debug_enabled():
                    raise
                err_console.print(
                    f"[bold red]Error:[/] {exc.message}",
                    highlight=False,
                    markup=True,
                    soft_wrap=True,
                )
                sys.exit(exit_code or exc.exit_code or 1)
            except OSError as exc:
                # disk full, permission denied ...: the environment, not a bug
                if debug_enabled():
                    raise
                where = f"{exc.filename}: " if exc.filename else ""
                err_console.print(
                    f"[bold red]Error:[/] {where}{exc.strerror or exc}",
                    highlight=False,
                    soft_wrap=True,
                )
                err_console.print(
                    "the step in progress was not committed, or will be "
                    "finished by 'bidspack recover'"
                )
                sys.exit(exit_code or 1)
            except KeyboardInterrupt:
                err_console.print(
                    "[bold red]Interrupted[/]: nothing was committed by the step in progress"
                )
                sys.exit(130)

        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


def json_option(func: F) -> F:
    """``--json``: print one JSON record per line instead of the table."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print result records as JSON lines."
    )(func)


def render(
    records: Iterable[Record], *, as_json: bool, title: str, quiet_ok: bool = False
) -> dict[str, int]:
    """Print records (JSON lines or a rich table with a status summary); return counts."""
    out = Console()
    seen: list[Record] = []
    if as_json:
        for rec in records:
            seen.append(rec)
            click.echo(rec.to_json())
        return count_statuses(seen)
    table = Table(title=title, show_lines=False)
    table.add_column("action")
    table.add_column("path", overflow="fold")
    table.add_column("status")
    table.add_column("message", overflow="fold")
    for rec in records:
        seen.append(rec)
        if quiet_ok and rec.status == "ok":
            continue
        style = STATUS_STYLE[rec.status]
        table.add_row(rec.action, rec.path, f"[{style}]{rec.status}[/]", rec.message)
    if table.row_count:
        out.print(table)
    counts = count_statuses(seen)
    out.print("  ".join(f"[{STATUS_STYLE[k]}]{k}: {v}[/]" for k, v in counts.items()))
    return counts
