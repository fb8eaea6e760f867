"""Packaging spec: schema validation with file, line and key; semantic checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidspack.errors import SpecError
from bidspack.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "lightsheet-spec.toml"


def test_example_spec_loads_and_matches_packaged_copy() -> None:
    from bidspack.examples import example_spec_text

    spec = load_spec(EXAMPLE)
    assert [c.folder for c in spec.channels][:2] == ["640_N4", "atlaslabel_def_origspace"]
    assert spec.channels[0].voxel_size_um == (4.0, 1.8, 1.8)
    assert example_spec_text() == EXAMPLE.read_text(encoding="utf-8")


def _spec(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_schema_error_names_line_and_key(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        'voxel_size = { z = 4.0, y = 1.8, x = 1.8 }\nvoxel_unit = "um"',
        'voxel_size = { z = -4.0, y = 1.8, x = 1.8 }\nvoxel_unit = "um"',
    )
    p = _spec(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        load_spec(p)
    err = exc.value
    assert err.location == "channels[0].voxel_size.z"
    lines = text.splitlines()
    assert err.line is not None and "z = -4.0" in lines[err.line - 1]
    assert f"s.toml:{err.line}" in err.message


def test_unknown_key_and_missing_required(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace('License = "CC-BY-4.0"', 'Licence = "x"')
    with pytest.raises(SpecError, match="License"):
        load_spec(_spec(tmp_path, text))


def test_bad_regex_and_template_group(tmp_path: Path) -> None:
    base = EXAMPLE.read_text(encoding="utf-8")
    bad_re = base.replace("pattern = '(?P<date>", "pattern = '(?P<date")
    with pytest.raises(SpecError, match="invalid regular expression"):
        load_spec(_spec(tmp_path, bad_re))
    bad_tpl = base.replace('label = "{subject}-{genotype}"', 'label = "{subject}-{strain}"')
    with pytest.raises(SpecError, match=r"\{strain\}") as exc:
        load_spec(_spec(tmp_path, bad_tpl, "t.toml"))
    assert exc.value.location == "subjects.label"


def test_suffix_must_be_a_microscopy_suffix(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace('suffix = "SPIM"', 'suffix = "T1w"', 1)
    with pytest.raises(SpecError, match="not a BIDS microscopy suffix"):
        load_spec(_spec(tmp_path, text))


def test_toml_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="TOML syntax error"):
        load_spec(_spec(tmp_path, "spec_version = \n"))


def test_yaml_spec_with_line_numbers(tmp_path: Path) -> None:
    text = """spec_version: 1
dataset: {Name: x, Authors: [a], License: CC0}
subjects: {pattern: '(?P<s>\\d+)', label: '{s}'}
channels:
  - folder: img
    voxel_unit: parsec
"""
    with pytest.raises(SpecError) as exc:
        load_spec(_spec(tmp_path, text, "s.yaml"))
    assert exc.value.location == "channels[0].voxel_unit"
    assert exc.value.line == 6
