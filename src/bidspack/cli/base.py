"""Shared CLI machinery: the error decorator, record rendering, common options.

After dandi-cli's ``cli/base.py``: bidspack errors become one clean ``Error:`` line
and a non-zero exit; ``--debug`` (or ``BIDSPACK_DEBUG=1``) lets the traceback through.

User data (paths, file names, messages, hints) is never interpreted as rich markup:
it is printed through :class:`rich.text.Text` objects or :func:`bidspack.safety.escape`,
so a file named ``[red]x[/b].tif`` prints as is. When stdout is not a terminal (a pipe,
a file) lines are never wrapped or folded, so a long path stays on one line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bidspack.errors import BidspackError
from bidspack.records import Record, count_statuses

F = TypeVar("F", bound=Callable[..., Any])

#: Width of a console whose output is not a terminal: wide enough that no line is ever
#: wrapped or a table column folded (a path is at most 4096 bytes).
PIPE_WIDTH = 10_000

STATUS_STYLE = {
    "ok": "green",
    "planned": "cyan",
    "excluded": "magenta",
    "notneeded": "dim",
    "impossible": "yellow",
    "error": "bold red",
    "warning": "yellow",  # a passing validation record with severity "warning"
}


def make_console(*, stderr: bool = False) -> Console:
    """A rich console for stdout (or stderr): on a terminal, the terminal's width; when
    redirected (pipe, file), no wrapping at all, so long paths are never cut or folded.
    Never highlights (user data keeps its own look)."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=PIPE_WIDTH)


def status_text(status: str) -> Text:
    """A status word in its colour."""
    return Text(status, style=STATUS_STYLE.get(status, ""))


def plain(text: object, style: str = "") -> Text:
    """*text* as a rich :class:`Text`: printed literally, never read as markup."""
    return Text(str(text), style=style)


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
            err_console = make_console(stderr=True)  # the stream as it is now
            try:
                return f(*args, **kwargs)
            except BidspackError as exc:
                if debug_enabled():
                    raise
                err_console.print(
                    Text.assemble(("Error:", "bold red"), " ", exc.message), soft_wrap=True
                )
                sys.exit(exit_code or exc.exit_code or 1)
            except OSError as exc:
                # disk full, permission denied ...: the environment, not a bug
                if debug_enabled():
                    raise
                where = f"{exc.filename}: " if exc.filename else ""
                err_console.print(
                    Text.assemble(("Error:", "bold red"), " ", f"{where}{exc.strerror or exc}"),
                    soft_wrap=True,
                )
                err_console.print(
                    "the step in progress was not committed, or will be "
                    "finished by 'bidspack recover'"
                )
                sys.exit(exit_code or 1)
            except KeyboardInterrupt:
                err_console.print(
                    Text.assemble(
                        ("Interrupted", "bold red"),
                        ": nothing was committed by the step in progress",
                    )
                )
                sys.exit(130)

        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


def json_option(func: F) -> F:
    """``--json``: print one JSON record per line instead of the table."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print result records as JSON lines."
    )(func)


def is_warning(rec: Record) -> bool:
    """A validation warning (a passing record that still deserves a look)."""
    return rec.details.get("severity") == "warning"


_FILE_COUNT = re.compile(r"\((\d+) file\(s\)\)")


def validation_counts(
    records: Iterable[Record], *, subcodes: bool = False
) -> tuple[Counter[str], Counter[str]]:
    """(errors, warnings) of the ``validate`` records, counted by code: the validator's
    issue code (``SIDECAR_KEY_RECOMMENDED``; with its sub-code in brackets if
    *subcodes*), or bidspack's check name. A validator warning counts once per file."""
    errors: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    for rec in records:
        if rec.action != "validate":
            continue
        code = str(rec.details.get("code") or rec.details.get("check") or "other")
        if rec.status == "error" and rec.details.get("subCode"):
            code += f"[{rec.details['subCode']}]"
        if not subcodes:
            code = code.split("[", 1)[0]
        if rec.status == "error":
            errors[code] += 1
        elif is_warning(rec):
            found = _FILE_COUNT.search(rec.message)
            n = int(found.group(1)) if found else len(rec.details.get("paths", [])) or 1
            warnings[code] += n
    return errors, warnings


def _by_code(counter: Counter[str]) -> str:
    ordered = sorted(counter.items(), key=lambda x: (-x[1], x[0]))
    return ", ".join(f"{code} {n}" for code, n in ordered)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def validation_lines(records: Iterable[Record], *, subcodes: bool = False) -> list[str]:
    """The validation outcome in plain words, then errors and warnings counted by code::

    validation: 0 errors, 56 warnings: the dataset is valid
      warnings by code: SIDECAR_KEY_RECOMMENDED 45, README_FILE_MISSING 3, ...
    """
    errors, warnings = validation_counts(records, subcodes=subcodes)
    n_err, n_warn = sum(errors.values()), sum(warnings.values())
    verdict = "the dataset is NOT valid" if n_err else "the dataset is valid"
    lines = [f"validation: {_plural(n_err, 'error')}, {_plural(n_warn, 'warning')}: {verdict}"]
    if errors:
        lines.append(f"  errors by code: {_by_code(errors)}")
    if warnings:
        lines.append(f"  warnings by code: {_by_code(warnings)}")
    return lines


def status_summary(counts: dict[str, int]) -> Text:
    """``ok: 3  excluded: 2 ...``: the statuses that occurred (``error: 0`` always)."""
    shown = [(k, v) for k, v in counts.items() if v or k == "error"]
    out = Text()
    for i, (k, v) in enumerate(shown):
        if i:
            out.append("  ")
        out.append(f"{k}: {v}", style=STATUS_STYLE.get(k, ""))
    return out


def render(
    records: Iterable[Record], *, as_json: bool, title: str, quiet_ok: bool = False
) -> dict[str, int]:
    """Print records (JSON lines or a table with a status summary); return counts.

    With *quiet_ok* passing records are left out of the table, except warnings. Every
    cell is a :class:`Text` (no markup interpretation of paths and messages)."""
    out = make_console()
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
        if quiet_ok and rec.status == "ok" and not is_warning(rec):
            continue
        status = status_text("warning" if is_warning(rec) else rec.status)
        table.add_row(plain(rec.action), plain(rec.path), status, plain(rec.message))
    if table.row_count:
        out.print(table)
    counts = count_statuses(seen)
    out.print(status_summary(counts))
    return counts


def human_bytes(n: int) -> str:
    """``1.2 MB`` (decimal units)."""
    size = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def tree_bytes(path: Path) -> int:
    """Size of a file, or of every file below a folder (an ``.ome.zarr``); 0 if absent.
    Symlinks are not followed."""
    try:
        if path.is_symlink() or not path.is_dir():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


@contextlib.contextmanager
def progress_bar(
    wanted: bool, what: str, *, unit: str = ""
) -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar on stderr when *wanted* and stderr is a terminal (printed lines
    go above it when stdout is the same terminal); yields the ``progress(item, done,
    total)`` callback, or ``None`` when no bar is drawn (piped, ``--json``, dry runs).
    *unit* follows the counts (``"patches"``)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        show = wanted and sys.stderr.isatty()
    except (AttributeError, ValueError):
        show = False
    if not show:
        yield None
        return
    on_terminal = sys.stdout.isatty()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}" + (f" {unit}" if unit else "")),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=on_terminal,
        redirect_stderr=on_terminal,
    ) as bar:
        task = bar.add_task(what, total=None)

        def progress(item: str, done: int, total: int) -> None:
            name = item.rsplit("/", 1)[-1]
            bar.update(task, total=total, completed=done, description=f"{what} {name}".strip())

        yield progress
