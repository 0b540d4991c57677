"""Prints a loopback port that is free together with the ports a server derives from it.

Usage: free_port.py [OFFSET ...]; SeaweedFS (scripts/serve) needs 1 2 3 10000 10001 10002 10003."""
import random
import socket
import sys


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_base(offsets: list[int]) -> int:
    while True:
        base = random.randrange(20000, 40000)
        if all(bindable(base + offset) for offset in [0, *offsets]):
            return base


if __name__ == "__main__":
    print(free_base([int(offset) for offset in sys.argv[1:]]))
