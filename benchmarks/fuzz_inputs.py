"""Bounded fuzz run of bidspack's input parsers (issue 11; a benchmark-style script, not CI).

Targets:

- ``spec``: :func:`bidspack.spec.load_spec` on TOML and YAML bytes (the first byte of a
  fuzz input picks the format: even = ``.toml``, odd = ``.yaml``; the rest is the file).
  Seeds: ``examples/lightsheet-spec.toml``, a YAML translation of it, and hostile
  variants (alias bomb, deep nesting, bad templates, NaN/inf voxel sizes, ...).
- ``slices``: :func:`bidspack.io.sources.open_source` on a folder holding the input as
  ``Z0000.tif`` (slice folder or stack), then ``read_plane`` and ``iter_planes``; and on
  the file itself (:class:`~bidspack.io.sources.TiffStack`). Seeds: small TIFFs written
  with tifffile (uncompressed, LZW, tiled + deflate, BigTIFF, stacks, OME-TIFF) and real
  slices / OME-TIFF from ``../shared/realdata/`` (copied, never modified).
- ``omexml``: :func:`bidspack.io.omexml.physical_size_um` and
  :func:`~bidspack.io.omexml.origin_um` on XML text. Seeds: the real files of
  ``../shared/realdata/omexml/`` (reduced to their first image; every original is also
  run once, whole).

Outcome of one case: *ok* (returned), *clean* (a :class:`bidspack.errors.BidspackError`;
for ``omexml`` also the ``ValueError`` that those functions document and every caller
catches, unless it wraps a ``MemoryError``/``RecursionError``), or *crash*: any other
exception, ``RecursionError``, ``MemoryError`` (address space limited per child with
``RLIMIT_AS``), a case running past ``--case-timeout`` (``SIGALRM`` in the child, or the
parent's watchdog for hangs in C code) or the child process dying. Each target runs in
its own child process; a dead or hung child is restarted for the remaining time.

Crashes are de-duplicated by exception type and innermost frame (timeouts: innermost
bidspack frame); the smallest input of each is kept, shrunk for a few seconds at the
end, and saved under ``--out/<target>/`` with its traceback and ``info.json``.

Engine: atheris (libFuzzer, coverage of bidspack, tifffile, yaml, tomllib, ome_types)
with a structure-aware custom mutator, if importable; otherwise hypothesis driving the
same mutator. Coverage-guided runs bounded by time are not exactly reproducible, even
with ``--seed``.

    python benchmarks/fuzz_inputs.py                       # 60 s per target
    python benchmarks/fuzz_inputs.py --target spec --seconds 20 --out /tmp/fz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
TARGETS = ("spec", "slices", "omexml")

# shared counters (multiprocessing.RawArray "d"): index -> meaning
TRIED, OK, CLEAN, CRASH, SUSPICIOUS, CLEAN_VALUEERROR, CASE_START, FUZZ_START, DONE = range(9)
N_COUNTERS = 9


class CaseTimeout(BaseException):
    """Raised by SIGALRM when one case runs past the per-case time limit."""


class TimeUp(Exception):
    """Ends the hypothesis loop at the deadline."""


# --------------------------------------------------------------------------- mutations

# fmt: off
INTERESTING_INTS = [
    0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 255, 256, 0x7fff, 0xffff, 0x10000, 30000, 0x7fffffff,
    0xffffffff, 0x10000000000, 0x7fffffffffffffff, 0xffffffffffffffff,
]
# fmt: on


def byte_mutate(data: bytes, rng: random.Random, others: list[bytes], max_size: int) -> bytes:
    """One generic byte-level mutation (used by both engines)."""
    b = bytearray(data)
    op = rng.randrange(8)
    if not b or op == 0:  # insert random bytes
        pos = rng.randint(0, len(b))
        b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif op == 1:  # flip a bit
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    elif op == 2:  # interesting byte
        b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x22, 0x3C, 0x5B, 0x7B])
    elif op == 3:  # delete a range
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 64)]
    elif op == 4:  # duplicate a range
        i = rng.randrange(len(b))
        chunk = b[i : i + rng.randint(1, 256)]
        j = rng.randint(0, len(b))
        b[j:j] = chunk * rng.randint(1, 4)
    elif op == 5:  # truncate
        del b[rng.randint(0, len(b)) :]
    elif op == 6 and others:  # splice with another seed
        o = rng.choice(others)
        i, j = rng.randint(0, len(b)), rng.randint(0, len(o))
        b = b[:i] + o[j:]
    else:  # overwrite an aligned word with an interesting integer
        v = rng.choice(INTERESTING_INTS) & 0xFFFFFFFF
        i = rng.randrange(len(b))
        b[i : i + 4] = v.to_bytes(4, rng.choice(["little", "big"]))
    return bytes(b[:max_size])


def _replace_random(text: str, pattern: re.Pattern[str], values: list[str], rng: random.Random):
    matches = list(pattern.finditer(text))
    if not matches:
        return text
    m = rng.choice(matches)
    return text[: m.start(1)] + rng.choice(values) + text[m.end(1) :]


# ---------------------------------------------------------------- target: spec

# fmt: off
SPEC_VALUES = [
    'nan', 'inf', '-inf', '-1.0', '0', '0.0', '1e309', '99999999999999999999999', '-0', '""',
    '"{subject"', '"{}"', '"{x:>9999}"', '"{subject.upper}"', '"{subject[0]}"', '"{subject!r}"',
    '"../../escape"', '"/etc"', '"a\\tb"', '"a\\nb"', '"[/b]"', '"/dev/stdin"',
    '"(a+)+$"', '"("', '"(?P<subject>a*)*b"', '"**/../x"',
    '"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"',
    'true', '[]', '{}', '[[[[[[[[1]]]]]]]]', '2021-10-28T12:39:11', '"\\u0000"', '"µm"',
    '"parsec"', '"zarr"', '"ome-zarr"', '"none"', '"label"',
]
# fmt: on
# fmt: off
SPEC_TOKENS = [
    'spec_version', 'dataset', 'subjects', 'pattern', 'label', 'sample', 'channels', 'folder',
    'type', 'derivative', 'pipeline', 'desc', 'suffix', 'entities', 'image', 'voxel_size',
    'voxel_unit', 'sidecar', 'exclude', 'evidence', 'reason', 'path', 'output', 'formats',
    'labels_of', 'label_name', 'select', 'extras', 'required', 'participants', 'samples', 'group',
    'map', 'value', 'sanitize', 'tile', 'compression', '[[channels]]', '[[exclude]]', '&a', '*a',
    '<<: *a', '!!binary', '!!set', '!!python/object:os.system', '{subject}', '(?P<subject>', '..',
    'nan', 'inf',
]
# fmt: on


def _yaml_alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


class SpecTarget:
    name = "spec"
    max_len = 64 * 1024
    timeout_frame_hint = "bidspack"

    def __init__(self) -> None:
        import tomllib

        import yaml

        toml_text = (REPO / "examples" / "lightsheet-spec.toml").read_text("utf-8")
        yaml_text = yaml.safe_dump(tomllib.loads(toml_text), sort_keys=False, allow_unicode=True)
        self.seeds: list[tuple[str, bytes]] = [
            ("example.toml", b"T" + toml_text.encode()),
            ("example.yaml", b"Y" + yaml_text.encode()),
        ]
        variants = {
            "voxel_nan": ("z = 4.0, y = 1.8", "z = nan, y = 1.8"),
            "voxel_inf": ("z = 4.0, y = 1.8", "z = inf, y = 1.8"),
            "voxel_zero": ("z = 4.0, y = 1.8", "z = 0.0, y = -1.8"),
            "tmpl_open": ('label = "{subject}-{genotype}"', 'label = "{subject"'),
            "tmpl_attr": ('label = "{subject}-{genotype}"', 'label = "{subject.upper}"'),
            "tmpl_spec": ('label = "{subject}-{genotype}"', 'label = "{subject:>9999}"'),
            "tmpl_empty": ('sample = "brain{hemisphere}"', 'sample = "{}"'),
            "dotdot": ('folder = "640_N4"', 'folder = "../../escaped"'),
            "abs_folder": ('folder = "640_N4"', 'folder = "/etc"'),
            "tab_folder": ('folder = "640_N4"', 'folder = "640\\tN4"'),
            "backtrack": ("pattern = '(?P<date>", "pattern = '(?P<date>(a+)+$)(?P<x>"),
            "bad_regex": ("pattern = '(?P<date>", "pattern = '((?P<date>"),
            "evidence_zero": ('path = "*/atlas', 'evidence = "/dev/zero"\npath = "*/atlas'),
            "evidence_dir": ('path = "*/atlas', 'evidence = "."\npath = "*/atlas'),
            "exclude_dotdot": ('path = "*/atlas', 'path = "../*/atlas'),
            "long_label": ('label = "{subject}-{genotype}"', 'label = "' + "x" * 330 + '"'),
            "datetime": ('BodyPart = "BRAIN"', 'BodyPart = "BRAIN"\nWhen = 2021-10-28T12:39:11'),
            "huge_tile": ("tile = 256", "tile = 99999999999999999999"),
            "markup": ('folder = "640_N4"', 'folder = "[/b][red]x"'),
        }
        for name, (old, new) in variants.items():
            assert old in toml_text, name
            self.seeds.append((f"{name}.toml", b"T" + toml_text.replace(old, new, 1).encode()))
        self.seeds += [
            ("alias_bomb.yaml", b"Y" + _yaml_alias_bomb().encode()),
            ("deep.yaml", b"Y" + b"a: " + b"[" * 3000 + b"]" * 3000 + b"\n"),
            ("deep.toml", b"T" + b"a = " + b"[" * 3000 + b"]" * 3000 + b"\n"),
            ("deep_tables.toml", b"T" + b"a = " + b"{b = " * 2000 + b"1" + b"}" * 2000 + b"\n"),
            ("latin1.toml", b"T" + toml_text.replace("A. Curator", "A. Cur\xe9").encode("latin-1")),
            ("python_tag.yaml", b"Y" + b"a: !!python/object/apply:os.system ['true']\n"),
            ("list_top.yaml", b"Y- 1\n- 2\n"),
        ]
        # slow hostile inputs: run once each, kept out of the mutation corpus (every
        # mutant of them would cost seconds; /dev/zero is not in the mutation vocabulary)
        slow = ("evidence_zero.toml", "deep.yaml")
        self.extra_seeds = [sd for sd in self.seeds if sd[0] in slow]
        self.seeds = [sd for sd in self.seeds if sd[0] not in slow]

    def mutate(self, data: bytes, rng: random.Random) -> bytes:
        head, body = data[:1] or b"T", data[1:]
        text = body.decode("utf-8", "replace")
        op = rng.randrange(6)
        if op == 0:  # replace a value
            pat = re.compile(r"(?:=|:)[ \t]*([^\n,}\]]+)")
            text = _replace_random(text, pat, SPEC_VALUES, rng)
        elif op == 1:  # delete a line
            lines = text.splitlines(keepends=True)
            if lines:
                del lines[rng.randrange(len(lines))]
            text = "".join(lines)
        elif op == 2:  # duplicate a line
            lines = text.splitlines(keepends=True)
            if lines:
                i = rng.randrange(len(lines))
                lines.insert(rng.randrange(len(lines)), lines[i])
            text = "".join(lines)
        elif op == 3:  # insert a token
            i = rng.randint(0, len(text))
            text = text[:i] + rng.choice(SPEC_TOKENS) + text[i:]
        elif op == 4:  # nest a value
            n = rng.choice([2, 10, 100, 1000])
            pat = re.compile(r"(?:=|:)[ \t]*([^\n]+)")
            matches = list(pat.finditer(text))
            if matches:
                m = rng.choice(matches)
                text = text[: m.start(1)] + "[" * n + m.group(1) + "]" * n + text[m.end(1) :]
        else:  # switch format
            head = b"Y" if head == b"T" else b"T"
        return head + text.encode("utf-8", "surrogatepass")

    def repro(self, data: bytes) -> tuple[str, bytes]:
        return ("input.yaml" if data[:1] and data[0] & 1 else "input.toml"), data[1:]

    def run(self, data: bytes, casedir: Path, check: Any) -> None:
        from bidspack.spec import load_spec

        name, body = self.repro(data)
        path = casedir / ("spec" + Path(name).suffix)
        path.write_bytes(body)
        check(load_spec, path)


# -------------------------------------------------------------- target: slices

# fmt: off
TIFF_TAGS = [
    256, 257, 258, 259, 262, 270, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338, 339, 330,
    0xc696, 0xc697,
]
# fmt: on


def _tiff_entries(b: bytes) -> list[tuple[int, bool, str]]:
    """Offsets of the IFD entries of a TIFF (first 8 IFDs), with BigTIFF flag and byte order."""
    if len(b) < 16 or b[:2] not in (b"II", b"MM"):
        return []
    bo = "<" if b[:2] == b"II" else ">"
    order = "little" if bo == "<" else "big"
    big = int.from_bytes(b[2:4], order) == 43
    off = int.from_bytes(b[8:16] if big else b[4:8], order)
    out: list[tuple[int, bool, str]] = []
    for _ in range(8):
        if not 0 < off < len(b) - 8:
            break
        n = int.from_bytes(b[off : off + (8 if big else 2)], order)
        first = off + (8 if big else 2)
        size = 20 if big else 12
        if n > 4096:
            break
        out += [
            (first + i * size, big, order) for i in range(n) if first + i * size + size <= len(b)
        ]
        nxt = first + n * size
        off = int.from_bytes(b[nxt : nxt + (8 if big else 4)], order)
    return out


class SlicesTarget:
    name = "slices"
    max_len = 512 * 1024
    max_planes = 64  # planes decoded per source (a 300 KB file may hold 20000 pages)

    def __init__(self) -> None:
        import numpy as np
        import tifffile

        rng = np.random.default_rng(0)

        def tif(arr: Any, **kw: Any) -> bytes:
            buf = io.BytesIO()
            tifffile.imwrite(buf, arr, **kw)
            return buf.getvalue()

        u16 = rng.integers(0, 4000, (24, 32), dtype=np.uint16)
        stack = rng.integers(0, 4000, (3, 32, 48), dtype=np.uint16)
        self.seeds: list[tuple[str, bytes]] = [
            ("plain_u16.tif", tif(u16)),
            ("lzw_u16.tif", tif(u16, compression="lzw")),
            (
                "tiled_deflate_u8.tif",
                tif(
                    rng.integers(0, 255, (40, 48), dtype=np.uint8),
                    tile=(16, 16),
                    compression="zlib",
                ),
            ),
            (
                "predictor_f32.tif",
                tif(rng.random((20, 24), dtype=np.float32), compression="zlib", predictor=True),
            ),
            ("bigtiff_u16.tif", tif(u16, bigtiff=True)),
            ("stack_u16.tif", tif(stack, photometric="minisblack")),
            (
                "stack_tiled_deflate.tif",
                tif(stack, tile=(16, 16), compression="zlib", photometric="minisblack"),
            ),
            (
                "stack.ome.tif",
                tif(
                    stack,
                    ome=True,
                    photometric="minisblack",
                    metadata={
                        "axes": "ZYX",
                        "PhysicalSizeX": 1.8,
                        "PhysicalSizeY": 1.8,
                        "PhysicalSizeZ": 4.0,
                        "PhysicalSizeXUnit": "µm",
                    },
                ),
            ),
            ("rgb_u8.tif", tif(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))),
        ]
        real = REALDATA / "stp_mouse_brain" / "slices"
        for name in ("image_0000.tif", "image_0135.tif"):
            if (real / name).is_file():
                self.seeds.append((f"real_{name}", (real / name).read_bytes()))
        ome = REALDATA / "ometiff" / "s_1_t_1_c_1_z_1.ome.tiff"
        if ome.is_file():
            self.seeds.append(("real_s_1_t_1_c_1_z_1.ome.tif", ome.read_bytes()))
        self.extra_seeds: list[tuple[str, bytes]] = []

    def mutate(self, data: bytes, rng: random.Random) -> bytes:
        entries = _tiff_entries(data)
        if not entries:
            return data
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            pos, big, order = rng.choice(entries)
            op = rng.randrange(5)
            if op == 0:  # tag id
                b[pos : pos + 2] = rng.choice(TIFF_TAGS).to_bytes(2, order)
            elif op == 1:  # field type
                b[pos + 2 : pos + 4] = rng.randint(0, 18).to_bytes(2, order)
            elif op == 2:  # count
                n = 8 if big else 4
                v = rng.choice(INTERESTING_INTS) & ((1 << (8 * n)) - 1)
                b[pos + 4 : pos + 4 + n] = v.to_bytes(n, order)
            elif op == 3:  # value / offset (short values sit in the first bytes)
                n = 8 if big else 4
                v = rng.choice([*INTERESTING_INTS, len(data), len(data) - 1, len(data) + 8])
                v &= (1 << (8 * n)) - 1
                start = pos + (12 if big else 8)
                b[start : start + n] = v.to_bytes(n, order)
            else:  # claim a huge image (decompression bomb)
                n = 8 if big else 4
                start = pos + (12 if big else 8)
                tag = int.from_bytes(b[pos : pos + 2], order)
                if tag in (256, 257, 322, 323):
                    big_v = rng.choice([30000, 65535, 100000, 1 << 20])
                    b[start : start + n] = big_v.to_bytes(n, order)
        return bytes(b)

    def repro(self, data: bytes) -> tuple[str, bytes]:
        return "Z0000.tif", data

    def _consume(self, src: Any) -> None:
        nz = src.shape[0]
        src.read_plane(0)
        if nz > 1:
            src.read_plane(nz - 1)
        for i, _plane in enumerate(src.iter_planes(prefetch=2, workers=2)):
            if i + 1 >= self.max_planes:
                break

    def run(self, data: bytes, casedir: Path, check: Any) -> None:
        from bidspack.io.sources import open_source

        folder = casedir / "slices"
        folder.mkdir()
        path = folder / "Z0000.tif"
        path.write_bytes(data)
        for where in (folder, path):
            src = check(open_source, where)
            if src is not None:
                check(self._consume, src)


# -------------------------------------------------------------- target: omexml

# fmt: off
XML_VALUES = [
    'nan', 'NaN', 'inf', '-INF', '-1', '0', '-0', '1e400', '1e-400', '', ' ', 'µm', 'um', 'nm',
    'pc', 'Ym', 'reference frame', 'pixel', '99999999999999999999', '0x10', 'true', 'Pixels:0',
    'Image:0', '2016-06', 'uint16', 'XYZCT', '&lol9;', '&xxe;', ']]>', '\x00',
]
# fmt: on
# fmt: off
XML_TOKENS = [
    'PhysicalSizeX', 'PhysicalSizeY', 'PhysicalSizeZ', 'PhysicalSizeXUnit', 'PhysicalSizeYUnit',
    'PhysicalSizeZUnit', 'PositionX', 'PositionY', 'PositionZ', 'PositionXUnit', 'PositionZUnit',
    'TheZ', 'TheC', 'TheT', '<Plane ', '<Pixels ', '<Image ', '</Image>', '<TiffData ', 'SizeX',
    'SizeZ', 'Type', 'DimensionOrder', '<!DOCTYPE', '<!ENTITY', 'SYSTEM', 'xmlns',
    'http://www.openmicroscopy.org/Schemas/OME/2016-06',
    'http://www.openmicroscopy.org/Schemas/OME/2015-01', '<![CDATA[', '&#x0;', '&amp;',
]
# fmt: on
LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE OME [\n <!ENTITY lol "lol">\n'
    + "".join(f' <!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">\n' for i in range(2, 10))
    + ' <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n'
    + ' <!ENTITY xxe SYSTEM "file:///etc/hostname">\n]>\n'
)


def _reduce_omexml(text: str) -> str | None:
    """The first Image of an OME-XML document, its first 4 Planes, no annotations."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text.encode("utf-8"))
    except ET.ParseError:
        return None
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    images = [c for c in root if c.tag == ns + "Image"]
    if not images:
        return text
    for child in list(root):
        if child.tag != ns + "Image" or child is not images[0]:
            root.remove(child)
    for px in root.iter(ns + "Pixels"):
        for plane in [c for c in px if c.tag == ns + "Plane"][4:]:
            px.remove(plane)
    if ns:
        ET.register_namespace("", ns[1:-1])
    return ET.tostring(root, encoding="unicode")


class OmexmlTarget:
    name = "omexml"
    max_len = 256 * 1024

    def __init__(self) -> None:
        self.seeds: list[tuple[str, bytes]] = []
        self.extra_seeds: list[tuple[str, bytes]] = []  # whole originals, run once
        for f in sorted((REALDATA / "omexml").glob("*.xml")):
            text = f.read_text("utf-8")
            self.extra_seeds.append((f.name, text.encode()))
            small = _reduce_omexml(text)
            if small is not None:
                self.seeds.append((f"reduced_{f.name}", small.encode()))
        if self.seeds:
            body = self.seeds[0][1].decode()
            body = re.sub(r"^<\?xml[^>]*\?>\s*", "", body)
            bomb = re.sub(r'(Name|ID)="[^"]*"', r'\1="&lol9;"', body, count=1)
            self.seeds.append(("laughs_xxe.xml", (LAUGHS + bomb).encode()))

    def mutate(self, data: bytes, rng: random.Random) -> bytes:
        text = data.decode("utf-8", "replace")
        op = rng.randrange(5)
        if op == 0:  # attribute value
            text = _replace_random(text, re.compile(r'\w="([^"]*)"'), XML_VALUES, rng)
        elif op == 1:  # drop an attribute
            ms = list(re.finditer(r'\s\w+="[^"]*"', text))
            if ms:
                m = rng.choice(ms)
                text = text[: m.start()] + text[m.end() :]
        elif op == 2:  # duplicate an element start tag
            ms = list(re.finditer(r"<(Plane|Pixels|Image|Channel|TiffData)\b[^>]*/?>", text))
            if ms:
                m = rng.choice(ms)
                text = text[: m.start()] + m.group(0) * rng.randint(2, 5) + text[m.start() :]
        elif op == 3:  # schema version
            text = re.sub(
                r"OME/20\d\d-\d\d",
                rng.choice(
                    [
                        "OME/2015-01",
                        "OME/2013-06",
                        "OME/2012-06",
                        "OME/2011-06",
                        "OME/2010-06",
                        "OME/2099-01",
                    ]
                ),
                text,
            )
        else:  # deep nesting inside Pixels
            n = rng.choice([10, 200, 5000])
            i = text.find("<Pixels")
            j = text.find(">", i)
            if i >= 0 and j >= 0:
                text = text[: j + 1] + "<a>" * n + "</a>" * n + text[j + 1 :]
        return text.encode("utf-8", "surrogatepass")

    def repro(self, data: bytes) -> tuple[str, bytes]:
        return "input.ome.xml", data.decode("utf-8", "replace").encode("utf-8", "surrogatepass")

    def run(self, data: bytes, casedir: Path, check: Any) -> str | None:
        from bidspack.io.omexml import origin_um, physical_size_um

        # tifffile decodes ImageDescription as UTF-8 (cp1252 fallback): no surrogates
        xml = data.decode("utf-8", "replace")
        size = check(physical_size_um, xml)
        origin = check(origin_um, xml)
        odd = []
        if size is not None and not all(math.isfinite(v) and v > 0 for v in size):
            odd.append(f"physical_size_um -> {size}")
        if origin is not None and not all(math.isfinite(v) for v in origin):
            odd.append(f"origin_um -> {origin}")
        return "; ".join(odd) or None


TARGET_CLASSES = {"spec": SpecTarget, "slices": SlicesTarget, "omexml": OmexmlTarget}


# ------------------------------------------------------------------ the child


def _frame_loc(fs: traceback.FrameSummary) -> str:
    fn = fs.filename
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in fn:
            fn = fn.split(marker, 1)[1]
            break
    return f"{fn}:{fs.lineno} in {fs.name}"


class Child:
    def __init__(self, target: Any, args: argparse.Namespace, counters: Any, work: Path):
        from bidspack.errors import BidspackError

        self.t = target
        self.args = args
        self.c = counters
        self.work = work
        self.out = Path(args.out) / target.name
        self.out.mkdir(parents=True, exist_ok=True)
        self.BidspackError = BidspackError
        self.crashes: dict[str, dict[str, Any]] = self._load_crashes()
        self.last_flush = time.monotonic()
        self.minimizing = False
        signal.signal(signal.SIGALRM, self._alarm)

    def _alarm(self, signum: int, frame: Any) -> None:
        raise CaseTimeout(f"case ran past {self.args.case_timeout} s")

    def _load_crashes(self) -> dict[str, dict[str, Any]]:
        crashes = {}
        for info in self.out.glob("*/info.json"):
            d = json.loads(info.read_text())
            crashes[d["key"]] = d
        return crashes

    # ---- one call inside a case
    def _classify(self, exc: BaseException) -> str:
        if isinstance(exc, self.BidspackError):
            return "clean"
        if (
            self.t.name == "omexml"
            and type(exc) is ValueError
            and not isinstance(exc.__cause__, MemoryError | RecursionError)
        ):
            return "clean_valueerror"
        return "crash"

    def run_case(self, data: bytes) -> tuple[str, list[tuple[str, str, str, str]], str | None]:
        """Run one case: (outcome, [(key, type, location, traceback)], suspicious note)."""
        casedir = self.work / "case"
        shutil.rmtree(casedir, ignore_errors=True)
        casedir.mkdir()
        (self.work / "current.bin").write_bytes(data)
        outcomes: list[str] = []
        crashes: list[tuple[str, str, str, str]] = []

        def check(fn: Any, *a: Any) -> Any:
            try:
                result = fn(*a)
            except (CaseTimeout, KeyboardInterrupt):
                raise
            except BaseException as exc:
                kind = self._classify(exc)
                outcomes.append(kind)
                if kind == "crash":
                    crashes.append(self._describe(exc))
                del exc
                return None
            outcomes.append("ok")
            return result

        note = None
        self.c[CASE_START] = time.time()
        try:
            signal.setitimer(signal.ITIMER_REAL, self.args.case_timeout)
            try:
                note = self.t.run(data, casedir, check)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except CaseTimeout as exc:
            outcomes.append("crash")
            crashes.append(self._describe(exc))
        self.c[CASE_START] = 0.0
        outcome = next((k for k in ("crash", "clean", "clean_valueerror") if k in outcomes), "ok")
        return outcome, crashes, note

    def _describe(self, exc: BaseException) -> tuple[str, str, str, str]:
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "bidspack" in f.filename and "fuzz_inputs" not in f.filename]
        inner = _frame_loc(frames[-1]) if frames else "?"
        ours_loc = _frame_loc(ours[-1]) if ours else "(no bidspack frame)"
        tname = type(exc).__name__
        if isinstance(exc, CaseTimeout):
            tname, key_loc = "Timeout", ours_loc
        elif isinstance(exc, ValueError) and exc.__cause__ is not None:
            tname = f"ValueError from {type(exc.__cause__).__name__}"
            cause = traceback.extract_tb(exc.__cause__.__traceback__)
            key_loc = _frame_loc(cause[-1]) if cause else inner
        else:
            key_loc = inner
        tb = "".join(traceback.format_exception(exc, limit=-40))
        tb = tb if len(tb) < 20000 else tb[:5000] + "\n...\n" + tb[-10000:]
        return f"{tname} @ {key_loc}", tname, f"{key_loc} [bidspack: {ours_loc}]", tb

    # ---- bookkeeping
    def record(self, data: bytes, source: str = "fuzz") -> None:
        outcome, crashes, note = self.run_case(data)
        c = self.c
        c[TRIED] += 1
        c[
            {"ok": OK, "clean": CLEAN, "crash": CRASH, "clean_valueerror": CLEAN_VALUEERROR}[
                outcome
            ]
        ] += 1
        if outcome == "clean_valueerror":
            c[CLEAN] += 1
        if note:
            c[SUSPICIOUS] += 1
            key = "suspicious: " + re.sub(r"[-\d.e+]+|inf|nan", "#", note)
            self._save(key, "suspicious result", note, note, data, source)
        for key, tname, loc, tb in crashes:
            self._save(key, tname, loc, tb, data, source)
        if time.monotonic() - self.last_flush > 2:
            self.flush()

    def _save(self, key: str, tname: str, loc: str, tb: str, data: bytes, source: str) -> None:
        d = self.crashes.get(key)
        if d is None:
            digest = hashlib.sha1(key.encode()).hexdigest()[:8]
            slug = re.sub(r"[^A-Za-z0-9]+", "-", tname)[:30]
            d = {
                "key": key,
                "type": tname,
                "location": loc,
                "count": 0,
                "dir": f"{slug}-{digest}",
                "found_by": source,
                "size": None,
            }
            self.crashes[key] = d
        d["count"] += 1
        if d["size"] is None or len(data) < d["size"]:
            self._write(d, data, tb)

    def _write(self, d: dict[str, Any], data: bytes, tb: str) -> None:
        folder = self.out / d["dir"]
        folder.mkdir(exist_ok=True)
        for old in folder.glob("input*"):
            old.unlink()
        name, body = self.t.repro(data)
        (folder / name).write_bytes(body)
        (folder / "case.bin").write_bytes(data)  # the raw fuzz input (for --confirm)
        (folder / "traceback.txt").write_text(tb)
        d["size"] = len(data)
        d["reproducer"] = str(folder / name)
        d["literal"] = repr(body) if len(body) <= 4096 else None
        (folder / "info.json").write_text(json.dumps(d, indent=1))

    def flush(self) -> None:
        for d in self.crashes.values():
            folder = self.out / d["dir"]
            if folder.is_dir():
                (folder / "info.json").write_text(json.dumps(d, indent=1))
        self.last_flush = time.monotonic()

    # ---- shrinking
    def minimize(self, budget: float) -> None:
        end = time.monotonic() + budget
        todo = [
            d
            for d in self.crashes.values()
            if not d["key"].startswith(("Timeout", "Hang", "Died", "suspicious"))
            and d.get("size")
            and not d.get("minimized")
        ]
        for d in todo:
            folder = self.out / d["dir"]
            name = d["reproducer"].rsplit("/", 1)[1]
            body = (folder / name).read_bytes()
            prefix = b"Y" if name.endswith(".yaml") else (b"T" if name.endswith(".toml") else b"")
            per = min(self.args.minimize_seconds, end - time.monotonic())
            if per <= 0:
                break
            best = self._shrink(prefix, body, d["key"], time.monotonic() + per)
            if len(best) < len(body):
                _, crashes, _ = self.run_case(prefix + best)
                tb = next((t for k, _, _, t in crashes if k == d["key"]), None)
                if tb is not None:
                    d["minimized_from"] = len(prefix + body)
                    self._write(d, prefix + best, tb)
            d["minimized"] = True
        self.flush()

    def _shrink(self, prefix: bytes, body: bytes, key: str, end: float) -> bytes:
        def same(cand: bytes) -> bool:
            _, crashes, _ = self.run_case(prefix + cand)
            return any(k == key for k, _, _, _ in crashes)

        for unit in ("lines", "bytes"):
            parts = body.splitlines(keepends=True) if unit == "lines" else list(body)
            chunk = max(1, len(parts) // 2)
            while chunk >= 1 and time.monotonic() < end:
                i, changed = 0, False
                while i < len(parts) and time.monotonic() < end:
                    cand = parts[:i] + parts[i + chunk :]
                    joined = b"".join(cand) if unit == "lines" else bytes(cand)
                    if cand and same(joined):
                        parts, changed = cand, True
                    else:
                        i += chunk
                if not changed:
                    chunk //= 2
            body = b"".join(parts) if unit == "lines" else bytes(parts)
        return body


def child_main(
    target_name: str,
    args: argparse.Namespace,
    counters: Any,
    work: str,
    seconds: float,
    first: bool,
) -> None:
    """Entry point of the child process: limits, imports, seeds, fuzz loop, shrink."""
    limit = args.mem_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    wd = Path(work)
    log = os.open(wd / "child.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    import faulthandler

    stack = open(wd / "stack.txt", "w")  # noqa: SIM115 -- kept open for faulthandler
    faulthandler.enable(stack, all_threads=True)
    faulthandler.register(signal.SIGUSR1, stack, all_threads=True)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))

    engine = args.engine
    if engine in ("auto", "atheris"):
        try:
            import atheris
        except ImportError:
            if engine == "atheris":
                raise
            engine = "hypothesis"
        else:
            engine = "atheris"
    if engine == "atheris":
        with atheris.instrument_imports(include=["bidspack", "tifffile", "tomllib", "ome_types"]):
            _import_targets()
    else:
        _import_targets()
    counters[FUZZ_START] = time.time()
    target = TARGET_CLASSES[target_name]()
    child = Child(target, args, counters, wd)
    deadline = time.monotonic() + seconds
    if first:
        for _name, data in target.seeds + target.extra_seeds:
            child.record(data, source="seed")
    seeds = [d for _, d in target.seeds]
    if engine == "atheris":
        _fuzz_atheris(child, target, seeds, args, wd, deadline)
    else:
        _fuzz_hypothesis(child, target, seeds, args, deadline)
    _finish(child, args)


def _import_targets() -> None:
    import logging

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # one warning per broken tag
    import bidspack.errors
    import bidspack.io.omexml
    import bidspack.io.sources
    import bidspack.spec  # noqa: F401


def _finish(child: Child, args: argparse.Namespace) -> None:
    child.flush()
    child.c[DONE] = 1  # the parent's watchdog still covers a hang while shrinking
    child.minimize(args.minimize_total)
    child.c[DONE] = 2
    sys.stdout.flush()
    os._exit(0)


def _mutate_any(
    target: Any, data: bytes, rng: random.Random, seeds: list[bytes], max_size: int
) -> bytes:
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5:
            data = target.mutate(data, rng)
        else:
            data = byte_mutate(data, rng, seeds, max_size)
    return data[:max_size]


def _fuzz_atheris(
    child: Child,
    target: Any,
    seeds: list[bytes],
    args: argparse.Namespace,
    wd: Path,
    deadline: float,
) -> None:
    import atheris

    corpus = wd / "corpus"
    if not corpus.is_dir():
        corpus.mkdir()
        for name, data in target.seeds:
            (corpus / name).write_bytes(data)
    tokens = {"spec": SPEC_TOKENS, "omexml": XML_TOKENS, "slices": []}[target.name]
    dict_path = wd / "fuzz.dict"
    with open(dict_path, "w") as f:
        for tok in tokens:
            esc = "".join(
                chr(c) if 32 <= c < 127 and chr(c) not in '"\\' else f"\\x{c:02x}"
                for c in tok.encode()
            )
            f.write(f'"{esc}"\n')

    def one_input(data: bytes) -> None:
        if time.monotonic() > deadline:
            _finish(child, args)
        child.record(data)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.4:
            return atheris.Mutate(data, max_size)
        return _mutate_any(target, data, rng, seeds, max_size)

    remaining = max(1, int(deadline - time.monotonic()))
    argv = [
        sys.argv[0],
        f"-seed={args.seed}",
        f"-max_total_time={remaining + 30}",
        "-timeout=0",
        "-rss_limit_mb=0",
        "-malloc_limit_mb=0",
        f"-max_len={target.max_len}",
        f"-artifact_prefix={wd}/",
        "-print_final_stats=1",
        "-detect_leaks=0",
    ]
    if tokens:
        argv.append(f"-dict={dict_path}")
    atheris.Setup([*argv, str(corpus)], one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


def _fuzz_hypothesis(
    child: Child, target: Any, seeds: list[bytes], args: argparse.Namespace, deadline: float
) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    @hseed(args.seed)
    @settings(
        max_examples=10**9,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def body(d: Any) -> None:
        if d.draw(st.integers(0, 9)) == 0:
            data = d.draw(st.binary(max_size=4096))
        else:
            rng = random.Random(d.draw(st.integers(0, 2**32 - 1)))
            data = _mutate_any(target, rng.choice(seeds), rng, seeds, target.max_len)
        if time.monotonic() > deadline:  # after the draws: hypothesis replays this case
            raise TimeUp
        child.record(data)

    try:
        body()
    except TimeUp:
        pass
    except Exception:  # hypothesis' own complaints must not lose the counts
        traceback.print_exc()


# ------------------------------------------------------------------ the parent


def _stack_location(stack_file: Path) -> str:
    """Innermost frame of the thread that ran the case, from a faulthandler dump."""
    text = stack_file.read_text(errors="replace") if stack_file.is_file() else ""
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", text)
    for block in reversed(blocks):
        if "run_case" in block:
            m = re.search(r'File "([^"]+)", line (\d+) in (\S+)', block)
            if m:
                fn = m.group(1)
                for marker in ("/site-packages/", "/src/", "/lib/python3"):
                    fn = fn.split(marker, 1)[1] if marker in fn else fn
                return f"{fn}:{m.group(2)} in {m.group(3)}"
    return "?"


def _parent_crash(out: Path, target: Any, kind: str, wd: Path, detail: str) -> None:
    """Record a hang or a dead child from the parent (input: the child's current case)."""
    cur = wd / "current.bin"
    data = cur.read_bytes() if cur.is_file() else b""
    loc = _stack_location(wd / "stack.txt")
    key = f"{kind} @ {loc}"
    folder_out = out / target.name
    folder_out.mkdir(parents=True, exist_ok=True)
    existing = {json.loads(p.read_text())["key"]: p for p in folder_out.glob("*/info.json")}
    if key in existing:
        d = json.loads(existing[key].read_text())
        d["count"] += 1
        existing[key].write_text(json.dumps(d, indent=1))
        if len(data) >= d["size"]:
            return
    else:
        d = {
            "key": key,
            "type": kind,
            "location": f"{loc} ({detail})",
            "count": 1,
            "dir": f"{kind}-{hashlib.sha1(key.encode()).hexdigest()[:8]}",
            "found_by": "fuzz",
        }
    folder = folder_out / d["dir"]
    folder.mkdir(exist_ok=True)
    name, body = target.repro(data)
    (folder / name).write_bytes(body)
    (folder / "case.bin").write_bytes(data)
    stack = wd / "stack.txt"
    (folder / "traceback.txt").write_text(
        f"{kind}: {detail}\n"
        + (stack.read_text(errors="replace")[-20000:] if stack.is_file() else "")
    )
    d.update(
        size=len(data),
        reproducer=str(folder / name),
        literal=repr(body) if len(body) <= 4096 else None,
    )
    (folder / "info.json").write_text(json.dumps(d, indent=1))


def confirm_main(target_name: str, args: argparse.Namespace, case: str, result: str) -> None:
    """Re-run one saved case in a fresh, uninstrumented child (same limits)."""
    limit = args.mem_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    wd = Path(result).parent
    log = os.open(wd / "confirm.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    _import_targets()
    args = argparse.Namespace(**{**vars(args), "out": str(wd / "out")})
    child = Child(TARGET_CLASSES[target_name](), args, [0.0] * N_COUNTERS, wd)
    t = time.monotonic()
    outcome, crashes, _ = child.run_case(Path(case).read_bytes())
    elapsed = time.monotonic() - t
    info = {"outcome": outcome, "seconds": round(elapsed, 2), "keys": [c[0] for c in crashes]}
    Path(result).write_text(json.dumps(info))
    sys.stdout.flush()
    os._exit(0)


def confirm(name: str, args: argparse.Namespace) -> None:
    """Check that every saved crash reproduces without coverage instrumentation: each
    Timeout and Hang is re-run with twice the case time limit, and counts only if it
    still takes longer than the limit; every other crash must give the same key."""
    ctx = mp.get_context("spawn")
    cargs = argparse.Namespace(**{**vars(args), "case_timeout": 2 * args.case_timeout})
    for info_path in sorted((Path(args.out) / name).glob("*/info.json")):
        d = json.loads(info_path.read_text())
        case = info_path.parent / "case.bin"
        if d["type"] == "suspicious result" or not case.is_file():
            continue
        wd = Path(tempfile.mkdtemp(prefix=f"fuzz-confirm-{name}-"))
        result = wd / "result.json"
        proc = ctx.Process(target=confirm_main, args=(name, cargs, str(case), str(result)))
        proc.start()
        proc.join(2 * args.case_timeout + args.hang_grace + 60)
        slow = d["type"] in ("Timeout", "Hang")
        if proc.is_alive():
            proc.kill()
            proc.join()
            got = {"outcome": "killed", "seconds": None, "keys": []}
            ok = slow
        elif result.is_file():
            got = json.loads(result.read_text())
            if slow:  # still slow, or now a crash of another kind (MemoryError ...)
                ok = got["outcome"] == "crash" or got["seconds"] > args.case_timeout
            else:
                ok = d["key"] in got["keys"]
        else:
            got = {"outcome": f"child died ({proc.exitcode})", "seconds": None, "keys": []}
            ok = d["type"] == "Died"
        d["confirmed"] = ok
        d["confirm_run"] = got
        info_path.write_text(json.dumps(d, indent=1))
        shutil.rmtree(wd, ignore_errors=True)


def run_target(name: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    counters = ctx.RawArray("d", N_COUNTERS)
    out = Path(args.out)
    target = TARGET_CLASSES[name]()  # seeds only; no bidspack import in the parent
    wd = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    shutil.rmtree(out / name, ignore_errors=True)  # results of an earlier run
    used = 0.0
    restarts = 0
    first = True
    t0 = time.monotonic()
    while True:
        remaining = args.seconds - used
        if not first and remaining < 2:
            break
        (wd / "stack.txt").unlink(missing_ok=True)
        counters[CASE_START] = counters[FUZZ_START] = counters[DONE] = 0
        proc = ctx.Process(
            target=child_main, args=(name, args, counters, str(wd), remaining, first)
        )
        proc.start()
        started = time.time()
        limit_total = remaining + args.minimize_total + 120 + (60 if first else 0)
        hung = False
        while proc.is_alive():
            proc.join(0.25)
            cs = counters[CASE_START]
            stuck = bool(cs) and time.time() - cs > args.case_timeout + args.hang_grace
            hung = stuck or time.time() - started > limit_total
            if hung and proc.is_alive():
                os.kill(proc.pid, signal.SIGUSR1)  # faulthandler: dump the stacks
                time.sleep(1.0)
                proc.kill()
                proc.join()
        fs = counters[FUZZ_START]
        used += (time.time() - fs) if fs else (time.time() - started)
        first = False
        if hung:
            _parent_crash(
                out, target, "Hang", wd, f"killed after {args.case_timeout + args.hang_grace:.0f} s"
            )
        elif counters[DONE] == 2 and proc.exitcode == 0:
            break
        elif counters[DONE] == 0 or proc.exitcode != 0:
            if counters[CASE_START]:
                code = proc.exitcode
                what = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                _parent_crash(out, target, "Died", wd, f"child died ({what})")
            else:
                print(
                    f"[{name}] child exited with {proc.exitcode} outside a case; see "
                    f"{wd}/child.log",
                    file=sys.stderr,
                )
                tail = (wd / "child.log").read_text(errors="replace")[-3000:]
                print(tail, file=sys.stderr)
                if counters[TRIED] == 0:
                    break
        else:
            break  # finished fuzzing, died while shrinking
        restarts += 1
    log = out / name / "child.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if (wd / "child.log").is_file():
        shutil.copy(wd / "child.log", log)
    shutil.rmtree(wd, ignore_errors=True)
    if args.confirm:
        confirm(name, args)
    crashes = [json.loads(p.read_text()) for p in sorted((out / name).glob("*/info.json"))]
    return {
        "target": name,
        "seconds": round(used, 1),
        "wall_seconds": round(time.monotonic() - t0, 1),
        "cases": int(counters[TRIED]),
        "ok": int(counters[OK]),
        "clean": int(counters[CLEAN]),
        "clean_documented_valueerror": int(counters[CLEAN_VALUEERROR]),
        "crash_cases": int(counters[CRASH]),
        "suspicious_cases": int(counters[SUSPICIOUS]),
        "restarts": restarts,
        "unique_crashes": [
            c for c in crashes if c["type"] != "suspicious result" and c.get("confirmed", True)
        ],
        "unconfirmed": [c for c in crashes if c.get("confirmed") is False],
        "suspicious": [c for c in crashes if c["type"] == "suspicious result"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="fuzzing time per target")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    p.add_argument("--out", default="./fuzz-crashes", help="crash reproducers go here")
    p.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    p.add_argument("--case-timeout", type=float, default=5.0, help="seconds per case")
    p.add_argument(
        "--hang-grace",
        type=float,
        default=5.0,
        help="extra seconds before the parent kills a case stuck in C code",
    )
    p.add_argument("--mem-mb", type=int, default=3072, help="RLIMIT_AS of each child (MiB)")
    p.add_argument("--minimize-seconds", type=float, default=8.0, help="shrinking per crash")
    p.add_argument("--minimize-total", type=float, default=30.0, help="shrinking per target")
    p.add_argument(
        "--no-confirm",
        dest="confirm",
        action="store_false",
        help="do not re-run each crash uninstrumented at the end",
    )
    args = p.parse_args(argv)
    args.out = str(Path(args.out).resolve())
    targets = TARGETS if args.target == "all" else (args.target,)
    try:
        import atheris  # noqa: F401

        have_atheris = True
    except ImportError:
        have_atheris = False
    engine = args.engine if args.engine != "auto" else ("atheris" if have_atheris else "hypothesis")
    print(
        f"bidspack fuzz run: engine {engine}, {args.seconds:g} s per target, seed {args.seed}, "
        f"case timeout {args.case_timeout:g} s, RLIMIT_AS {args.mem_mb} MiB, out {args.out}"
    )
    results = []
    for name in targets:
        r = run_target(name, args)
        r["engine"] = engine
        results.append(r)
        print(
            f"[{name}] {r['cases']} cases in {r['seconds']} s: {r['ok']} ok, {r['clean']} "
            f"clean errors ({r['clean_documented_valueerror']} documented ValueError), "
            f"{r['crash_cases']} crashing cases, {len(r['unique_crashes'])} unique crashes "
            f"({len(r['unconfirmed'])} more not reproduced uninstrumented), "
            f"{r['suspicious_cases']} suspicious results, {r['restarts']} child restarts",
            flush=True,
        )
    print()
    print("target | cases | ok | clean | crash cases | unique crashes | suspicious | cases/s")
    for r in results:
        rate = r["cases"] / r["seconds"] if r["seconds"] else 0
        print(
            f"{r['target']} | {r['cases']} | {r['ok']} | {r['clean']} | {r['crash_cases']} | "
            f"{len(r['unique_crashes'])} | {r['suspicious_cases']} | {rate:.0f}"
        )
    for r in results:
        for c in r["unique_crashes"] + r["unconfirmed"] + r["suspicious"]:
            print(f"\n[{r['target']}] {c['type']} x{c['count']} at {c['location']}")
            print(f"  reproducer ({c['size']} bytes): {c.get('reproducer')}")
            if "confirmed" in c:
                run = c["confirm_run"]
                verdict = "reproduced" if c["confirmed"] else "NOT reproduced"
                print(f"  uninstrumented re-run: {verdict} ({run['outcome']}, {run['seconds']} s)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(results, indent=1))
    return 1 if any(r["unique_crashes"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
