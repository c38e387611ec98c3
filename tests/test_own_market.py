"""The README's "Your own market in one page", done as a user would: copies of two shared
captures in a folder of one's own, the README's spec and run YAML taken verbatim from the
README, `cmm data inspect` and `cmm run` as commands. Only the tiny random backbone and short
fits of configs/tiny.yaml are added, so that it runs in about a minute."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks() -> dict[str, str]:
    """The YAML blocks of the README's section, by the file name their first line gives."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Your own market in one page", 1)[1].split("\n### ", 1)[0]
    blocks = {}
    for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S):
        block = "\n".join(line[3:] if line.startswith("   ") else line
                          for line in block.splitlines())
        name = re.match(r"# (\S+\.yaml)", block)
        assert name, block
        blocks[name[1]] = block
    return blocks


def cmm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmm", *args], cwd=cwd, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_your_own_market_from_files_to_report(tmp_path, data_dir):
    blocks = readme_blocks()
    assert set(blocks) == {"my-market.yaml", "my-run.yaml"}
    mkt = tmp_path / "mkt"
    mkt.mkdir()
    spec = yaml.safe_load(blocks["my-market.yaml"])
    for name in spec["files"]:  # the user's own copies
        shutil.copyfile(data_dir / "binance" / "usdm" / name, mkt / name)
    (mkt / "my-market.yaml").write_text(blocks["my-market.yaml"])

    inspect = cmm("data", "inspect", "mkt/my-market.yaml", "--out", "inspect", cwd=tmp_path)
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    assert "my-market" in inspect.stdout

    run = yaml.safe_load(blocks["my-run.yaml"])
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    for key in ("teacher", "probe", "distill", "moe", "policy_settings"):
        run[key] = tiny[key]
    run["data"]["features"] = tiny["data"]["features"]
    (mkt / "my-run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))

    done = cmm("run", "mkt/my-run.yaml", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "runs" / "my-run" / "report.md").read_text()
    assert "my-market" in report and "### Main table" in report
    assert (tmp_path / "runs" / "my-run" / "report.html").is_file()
