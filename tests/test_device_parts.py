"""scripts/device_parts.sh: a file cut into git-ignored part folders, carried one a call, joined with its sha256
checked; a missing or damaged part is named, never installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"source {ROOT / 'scripts' / 'device_parts.sh'}; {script}"], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_split_take_join_round_trip(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    data = os.urandom(5 * 1048576 + 123)
    (tmp_path / "big.whl").write_bytes(data)
    assert sh("parts_split big.whl .pk core 2 2", tmp_path).returncode == 0
    assert sorted(p.name for p in tmp_path.glob(".pk*")) == [".pk1", ".pk2", ".pk3"]
    assert (tmp_path / ".pk1" / "core.count").read_text().strip() == "3"
    assert "/.pk*/" in (tmp_path / ".git" / "info" / "exclude").read_text()  # the parts never get committed
    assert sh("git status --porcelain", tmp_path).stdout.strip() == "?? big.whl"
    inbox = tmp_path / "in"
    assert sh(f"parts_take .pk 1 {inbox} && parts_take .pk 3 {inbox}", tmp_path).returncode == 0
    half = sh(f"parts_join {inbox} core {tmp_path / 'out'}", tmp_path)
    assert half.returncode == 1 and "part 2 of 3 has not arrived" in half.stderr
    assert sh(f"parts_take .pk 4 {inbox}", tmp_path).stderr.startswith("part 4 is not here")
    assert sh(f"parts_take .pk 2 {inbox}", tmp_path).returncode == 0
    joined = sh(f"parts_join {inbox} core {tmp_path / 'out'}", tmp_path)
    assert joined.returncode == 0 and Path(joined.stdout.strip()).read_bytes() == data
    (inbox / "core.part02").write_bytes(b"x" * 2 * 1048576)  # a damaged part
    bad = sh(f"parts_join {inbox} core {tmp_path / 'out2'}", tmp_path)
    assert bad.returncode == 1 and "sha256 mismatch" in bad.stderr and not (tmp_path / "out2" / "big.whl").exists()
