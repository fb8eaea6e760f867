"""Walking a submission folder without following or opening what must not be read.

:func:`scan` lists the regular files below a folder by ``lstat``: symbolic links are
not followed (unless asked, and then only links that stay inside the root), and FIFOs,
sockets and devices are never opened. Each entry that is not read is returned with
the reason, so the plan can list it as refused: nothing is dropped without a word.
Paths are root-relative POSIX strings, sorted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bidspack.safety import entry_kind, is_within

#: OS and editor junk: Finder metadata, Windows thumbnails, AppleDouble files, Office
#: lock files, NFS silly-renames. Packaging excludes them by default (recorded).
JUNK = re.compile(r"^(\.DS_Store|Thumbs\.db|ehthumbs\.db|desktop\.ini|\._.*|~\$.*|\.nfs.*)$", re.I)
JUNK_REASON = (
    "OS junk file (.DS_Store, Thumbs.db, desktop.ini, ._*, ~$*, .nfs*): excluded by default"
)


def is_junk(rel: str) -> bool:
    """True if the last component of *rel* is an OS/editor junk file name."""
    return JUNK.match(rel.rsplit("/", 1)[-1]) is not None


_KIND_WORDS = {
    "fifo": "a FIFO (named pipe)",
    "socket": "a socket",
    "device": "a device file",
    "other": "not a regular file or folder",
}


@dataclass
class Scan:
    """What :func:`scan` found.

    Attributes:
        files: regular files (and, with ``follow_symlinks``, links to regular files
            inside the root), root-relative, sorted.
        dirs: folders walked (root-relative), the start folder included.
        refused: ``(path, reason)`` for every entry that is not read.
        followed: ``(path, target)`` for every symbolic link that was followed
            (root-relative target).
    """

    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    followed: list[tuple[str, str]] = field(default_factory=list)


def refusal(root: Path, rel: str, *, follow_symlinks: bool) -> str | None:
    """Why the entry *rel* of *root* must not be read (``None``: it may be read).

    A symbolic link is refused unless *follow_symlinks* is set and it resolves to a
    regular file or folder inside *root*; a FIFO, socket or device always is.
    """
    path = root / rel
    kind = entry_kind(path)
    if kind in ("file", "dir", "missing"):
        return None
    if kind != "symlink":
        return f"{_KIND_WORDS[kind]}: not read"
    target = os.readlink(path)
    if not follow_symlinks:
        return (
            f"symbolic link to {target}: not followed "
            "(package --follow-symlinks follows links that stay inside the submission)"
        )
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return f"symbolic link to {target}: broken or a loop"
    if not is_within(resolved, root):
        return f"symbolic link to {target}: leads outside the submission, not followed"
    if entry_kind(resolved) not in ("file", "dir"):
        return f"symbolic link to {target}: not a regular file or folder"
    return None


def scan(root: Path, rel: str = "", *, follow_symlinks: bool = False) -> Scan:
    """Walk ``root/rel`` (a file or a folder) without following what must not be read.

    Args:
        root: the submission folder (containment is checked against it).
        rel: a root-relative start path ("" for the root itself).
        follow_symlinks: follow links that resolve inside *root* (a folder reached
            twice through links is walked once; the second is refused as a loop).

    Returns:
        A :class:`Scan`; a missing start path gives an empty one.
    """
    root = Path(root)
    out = Scan()
    start = rel.strip("/")
    why = refusal(root, start, follow_symlinks=follow_symlinks) if start else None
    if why is not None:
        out.refused.append((start, why))
        return out
    kind = entry_kind(root / start) if start else "dir"
    if kind == "symlink":
        kind = "file" if (root / start).is_file() else "dir"
        out.followed.append(
            (start, (root / start).resolve().relative_to(root.resolve()).as_posix())
        )
    if kind == "missing":
        return out
    if kind == "file":
        out.files.append(start)
        return out
    seen: set[tuple[int, int]] = set()
    stack = [start]
    while stack:
        folder = stack.pop()
        real = (root / folder).resolve() if folder else root.resolve()
        st = os.stat(real)
        if (st.st_dev, st.st_ino) in seen:
            out.refused.append((folder, "folder reached twice through symbolic links: not read"))
            continue
        seen.add((st.st_dev, st.st_ino))
        out.dirs.append(folder)
        try:
            names = sorted(os.listdir(root / folder))
        except OSError as exc:
            out.refused.append((folder, f"cannot list folder ({exc.strerror})"))
            continue
        for name in names:
            child = f"{folder}/{name}" if folder else name
            why = refusal(root, child, follow_symlinks=follow_symlinks)
            if why is not None:
                out.refused.append((child, why))
                continue
            ckind = entry_kind(root / child)
            if ckind == "symlink":
                target = (root / child).resolve().relative_to(root.resolve()).as_posix()
                out.followed.append((child, target))
                ckind = "file" if (root / child).is_file() else "dir"
            if ckind == "dir":
                stack.append(child)
            elif ckind == "file":
                out.files.append(child)
    out.files.sort()
    out.dirs.sort()
    out.refused.sort()
    return out
