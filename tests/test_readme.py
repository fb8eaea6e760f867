"""The README's walkthrough, run literally (bash, a fresh folder): from `draft-spec` to
a valid dataset. The `pip install -e .` line is skipped (the test runs in the installed
project); every other line runs as written and must succeed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def walkthrough() -> list[str]:
    """The command lines between the README's walkthrough markers."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(
        r"<!-- walkthrough -->\s*```bash\n(.*?)```\s*<!-- /walkthrough -->", text, re.S
    )
    assert block, "README has no walkthrough block"
    lines = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    return [ln for ln in lines if not ln.startswith("python3 -m pip install")]


def test_readme_walkthrough_works_literally(tmp_path: Path) -> None:
    lines = walkthrough()
    assert any("draft-spec" in ln for ln in lines) and lines[-1].startswith("bidspack validate")
    for line in lines:
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", line],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        assert proc.returncode == 0, (line, proc.stdout[-3000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr
    spec = (tmp_path / "my-spec.toml").read_text()
    assert '"TODO"' not in spec
    description = json.loads((tmp_path / "my-ds" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"
    assert list((tmp_path / "my-ds").glob("sub-*/micr/*_SPIM.ome.tif"))
