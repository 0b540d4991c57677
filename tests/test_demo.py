"""The README's demo command: it mounts the sample tree, shows it and leaves nothing mounted."""
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import mounted_paths

pytestmark = pytest.mark.mount

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(200)
def test_demo_mounts_the_sample_tree(tmp_path):
    environment = {**os.environ, "FSMOUNT_DEMO_DIR": str(tmp_path / "demo")}
    demo = subprocess.Popen([str(ROOT / "scripts" / "demo"), "--once", str(tmp_path / "mnt")], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = demo.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGTERM)  # the script and what it waits for; its exit trap stops the servers
        stdout, stderr = demo.communicate(timeout=30)
        pytest.fail(f"the demo took more than 150 s:\n{stdout}\n{stderr}")
    assert demo.returncode == 0, stderr
    listing = stdout.split("mounted on", 1)[1]
    for path in ("datasets/iris/iris.csv", "datasets/weather/readings.sqlite", "team/nlp/shared/notes.md",
                 "archive/papers-2024/fsmount.txt", "scratch", "s3/datasets/weather/readings.sqlite",
                 "s3/models/weights.bin", "s3/models/checkpoints", "s3-scratch", "azure/datasets/iris/iris.csv",
                 "gcs/datasets/weather/readings.sqlite", "web/iris.csv", "web/weather.sqlite",
                 "ipfs/iris/iris.csv", "ipfs/weather/readings.sqlite"):
        assert f"  {path}\n" in listing
    assert "on the S3 volume: 730 readings" in stdout
    assert "on the IPFS volume, every block checked against its CID: 730 readings" in stdout
    assert re.search(r"written through the rw S3 volume: \w", stdout)
    assert str(tmp_path / "mnt") not in mounted_paths()
