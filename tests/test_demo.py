"""The README's demo command: it mounts the sample tree, shows it and leaves nothing mounted."""
import os
import re
import subprocess
from pathlib import Path

from conftest import mounted_paths

ROOT = Path(__file__).resolve().parents[1]


def test_demo_mounts_the_sample_tree(tmp_path):
    environment = {**os.environ, "FSMOUNT_DEMO_DIR": str(tmp_path / "demo")}
    result = subprocess.run([str(ROOT / "scripts" / "demo"), "--once", str(tmp_path / "mnt")], env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    listing = result.stdout.split("mounted on", 1)[1]
    for path in ("datasets/iris/iris.csv", "datasets/weather/readings.sqlite", "team/nlp/shared/notes.md",
                 "archive/papers-2024/fsmount.txt", "scratch", "s3/datasets/weather/readings.sqlite",
                 "s3/models/weights.bin", "s3/models/checkpoints", "s3-scratch", "azure/datasets/iris/iris.csv",
                 "gcs/datasets/weather/readings.sqlite", "web/iris.csv", "web/weather.sqlite",
                 "ipfs/iris/iris.csv", "ipfs/weather/readings.sqlite"):
        assert f"  {path}\n" in listing
    assert "on the S3 volume: 730 readings" in result.stdout
    assert "on the IPFS volume, every block checked against its CID: 730 readings" in result.stdout
    assert re.search(r"written through the rw S3 volume: \w", result.stdout)
    assert str(tmp_path / "mnt") not in mounted_paths()
