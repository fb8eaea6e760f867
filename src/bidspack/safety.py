"""Hostile-input safety: one layer that every operation uses for untrusted values.

Submissions, specs, journals, evidence files and copied datasets come from outside.
This module turns what they contain into values that are safe to use, or refuses them
with a :class:`~bidspack.errors.UnsafeInputError` naming the file or key:

- **Paths**: :func:`check_relpath` (syntax: relative POSIX, no ``..``, no empty or
  control-character components) and :func:`inside` (the joined path, after symlink
  resolution, stays inside its root). :func:`is_within` for "output inside the
  submission" checks.
- **Entry kinds**: :func:`entry_kind` reads ``lstat`` only, so a symlink, FIFO, socket
  or device is recognised without being followed or opened.
- **Patterns**: :func:`compile_pattern` and :func:`compile_glob` compile spec regular
  expressions and globs with RE2 (``google-re2``, linear time: no backtracking blow-up).
- **Templates**: :func:`parse_template` / :func:`render_template` accept only
  ``{group}`` fields (``string.Formatter`` parsed; no attribute or index access, no
  conversion, no format spec).
- **Names written to tables**: :func:`check_text_field` refuses tabs, newlines and other
  control characters that cannot be written to a TSV cell or a file name.
- **Messages**: :func:`escape` makes user data inert in rich markup.

Limits are module constants, documented in ``docs/hostile-input.md``.
"""

from __future__ import annotations

import os
import stat
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from bidspack.errors import UnsafeInputError

#: Longest dataset-relative path component bidspack writes (most file systems: 255 bytes).
MAX_NAME_BYTES = 255
#: Longest BIDS label bidspack accepts (a file name holds several entities and a suffix).
MAX_LABEL_LENGTH = 64
#: Longest spec regular expression, glob or template.
MAX_PATTERN_LENGTH = 4096
#: Memory RE2 may use for one compiled spec pattern (bytes).
RE2_MAX_MEM = 8 << 20

EntryKind = Literal["file", "dir", "symlink", "fifo", "socket", "device", "missing", "other"]


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def check_relpath(rel: str, *, what: str, origin: str | Path | None = None) -> str:
    """Check that *rel* is a safe relative POSIX path and return it normalised
    (``a/./b`` -> ``a/b``; a trailing ``/`` removed).

    Refused: a non-string, an empty path, an absolute path (``/x``, ``C:\\x``), a ``..``
    component, a backslash, a NUL or other control character (tab, newline), a
    component longer than :data:`MAX_NAME_BYTES` bytes.

    Args:
        rel: the path as found in the untrusted file (spec, journal, evidence ...).
        what: what the path is, for the message (``"channels[0].folder"``).
        origin: the file the value comes from (named in the error).

    Raises:
        UnsafeInputError: the path is refused, naming *origin*, *what* and the reason.
    """

    def refuse(reason: str) -> UnsafeInputError:
        return UnsafeInputError(origin, f"{what} {rel!r}: {reason}")

    if not isinstance(rel, str):
        raise UnsafeInputError(origin, f"{what} must be a string, found {type(rel).__name__}")
    if not rel or rel in (".", "./"):
        raise refuse("empty path")
    if _has_control(rel):
        raise refuse("contains a control character (tab, newline, NUL ...)")
    if "\\" in rel:
        raise refuse("contains a backslash; use '/' between folders")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise refuse("is an absolute path; give a path relative to its root")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts:
        raise refuse("empty path")
    if ".." in parts:
        raise refuse("has a '..' component (it would leave its root folder)")
    for p in parts:
        if len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise refuse(f"a component is longer than {MAX_NAME_BYTES} bytes")
    return "/".join(parts)


def is_within(path: Path, root: Path) -> bool:
    """True if *path* is *root* or below it, after resolving symlinks of both (paths
    that do not exist yet are resolved as far as they exist)."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p == r or p.is_relative_to(r)


def inside(root: Path, rel: str, *, what: str, origin: str | Path | None = None) -> Path:
    """``root / rel`` after :func:`check_relpath`, checked to resolve inside *root*
    (symlinks of existing components followed), so a symlinked folder cannot lead out.

    Raises:
        UnsafeInputError: the path is refused or resolves outside *root*.
    """
    clean = check_relpath(rel, what=what, origin=origin)
    path = Path(root) / clean
    if not is_within(path, root):
        raise UnsafeInputError(
            origin, f"{what} {rel!r} resolves outside {root} (through a symbolic link)"
        )
    return path


def entry_kind(path: Path) -> EntryKind:
    """What *path* is, from ``lstat`` (a symlink is ``"symlink"``, never followed;
    FIFOs, sockets and devices are never opened)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "device"
    return "other"


class Matcher(Protocol):
    """A compiled pattern (RE2): ``fullmatch``/``match``/``search`` and ``groupindex``."""

    groupindex: Mapping[str, int]

    def fullmatch(self, text: str) -> Any: ...

    def search(self, text: str) -> Any: ...


def compile_pattern(pattern: str, *, what: str, origin: str | Path | None = None) -> Matcher:
    """Compile a spec regular expression with RE2 (linear-time matching; Python's
    ``(?P<name>...)`` groups work). Backreferences and look-around, which need
    backtracking, are refused.

    Raises:
        UnsafeInputError: too long, or not a pattern RE2 accepts (its reason given).
    """
    import re2

    if len(pattern) > MAX_PATTERN_LENGTH:
        raise UnsafeInputError(origin, f"{what}: longer than {MAX_PATTERN_LENGTH} characters")
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = RE2_MAX_MEM
    try:
        return re2.compile(pattern, options=opts)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise UnsafeInputError(
            origin,
            f"{what}: invalid regular expression ({reason}); bidspack matches with RE2 "
            "(no backreferences or look-around)",
        ) from exc


def glob_to_regex(pattern: str) -> str:
    """A glob as an anchored regular expression: ``**`` crosses ``/``, ``*`` and ``?``
    do not; every other character is literal."""
    import re

    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return rf"^{out}$"


def compile_glob(pattern: str, *, what: str, origin: str | Path | None = None) -> Matcher:
    """A spec glob (see :func:`glob_to_regex`) compiled with RE2 (linear time)."""
    return compile_pattern(glob_to_regex(pattern), what=what, origin=origin)


def parse_template(
    template: str, groups: Iterable[str], *, what: str, origin: str | Path | None = None
) -> tuple[str, ...]:
    """The field names of a label/sample template, checked.

    A template is text with ``{name}`` fields, each a named group of the subject
    pattern; ``{{`` and ``}}`` are literal braces. Refused: unbalanced braces, empty or
    positional fields (``{}``, ``{0}``), attribute or index access (``{a.b}``,
    ``{a[0]}``), conversions (``{a!r}``) and format specs (``{a:>9}``).

    Raises:
        UnsafeInputError: naming the template and the offending field.
    """
    known = set(groups)
    if len(template) > MAX_PATTERN_LENGTH:
        raise UnsafeInputError(origin, f"{what}: longer than {MAX_PATTERN_LENGTH} characters")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UnsafeInputError(
            origin, f"{what} {template!r}: {exc} (write {{{{ and }}}} for literal braces)"
        ) from exc
    names: list[str] = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        shown = (
            "{"
            + field
            + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "")
            + "}"
        )
        if not field.isidentifier():
            raise UnsafeInputError(
                origin,
                f"{what} {template!r}: field {shown} is not a group name "
                "(only {name} fields of named groups; no positions, attributes or indices)",
            )
        if conversion or spec:
            raise UnsafeInputError(
                origin, f"{what} {template!r}: field {shown} has a conversion or format spec"
            )
        if field not in known:
            raise UnsafeInputError(
                origin, f"{what} {template!r}: {{{field}}} is not a named group of the pattern"
            )
        names.append(field)
    return tuple(names)


def render_template(template: str, groups: Mapping[str, str]) -> str:
    """Fill a template checked by :func:`parse_template`: each ``{name}`` becomes the
    group's text (an unmatched optional group gives ``""``)."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            out.append(str(groups.get(field) or ""))
    return "".join(out)


def check_text_field(value: str, *, what: str, origin: str | Path | None = None) -> str:
    """Refuse a name or value that cannot be written to a TSV cell or a file name:
    control characters (tab, newline, carriage return, NUL ...) or text that is not
    valid Unicode (lone surrogates from undecodable file names).

    Raises:
        UnsafeInputError: naming *what* and the value.
    """
    if _has_control(value):
        raise UnsafeInputError(
            origin, f"{what} {value!r} contains a control character (tab, newline ...)"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsafeInputError(
            origin, f"{what} {value!r} is not valid UTF-8 (an undecodable file name)"
        ) from exc
    return value


def escape(text: object) -> str:
    """*text* made inert for rich markup (``[/b]`` in a file name prints as is)."""
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))
