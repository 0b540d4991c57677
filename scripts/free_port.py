"""Prints a loopback port that is free together with the ports a server derives from it.

Usage: free_port.py [OFFSET ...]; SeaweedFS (scripts/serve) needs 1 2 3 4 10000 10001 10002 10003."""
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
    """A port below the range the kernel gives connections their own ports from, as are the ports OFFSETS
    above it: a server's parts connect to each other, and one took a port its S3 gateway then could not."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        ephemeral = int(ports.read().split()[0])
    while True:
        base = random.randrange(10000, ephemeral - max(offsets, default=0))
        if all(bindable(base + offset) for offset in [0, *offsets]):
            return base


if __name__ == "__main__":
    print(free_base([int(offset) for offset in sys.argv[1:]]))
