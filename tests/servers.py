"""Local store servers for tests, started through scripts/serve on 127.0.0.1 and stopped after the session."""
import socket
import subprocess
import time
from pathlib import Path

import botocore.session

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server process and its request log; `requests(*texts)` counts log lines that hold every TEXT."""

    def __init__(self, name: str, log_dir: Path):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([str(ROOT / "scripts" / "serve"), name, str(self.port)],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self._accepting():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.1)

    def _accepting(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def requests(self, *texts: str) -> int:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return sum(all(text in line for text in texts) for line in lines)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def s3_admin(server: Server):
    """A plain botocore client for setting up and checking buckets from outside fsmount."""
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=server.url, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test")
