"""Sizes (`8MiB`, `20GB`) and durations (`60s`, `500ms`) as written in config files and mount options."""
import datetime
import math
import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def _size_units() -> dict[str, int]:
    """HOCON's size units, matched without case: a bare letter, `Ki`, `KiB` and `kibibyte(s)` are powers of 1024;
    `kB` and `kilobyte(s)` powers of 1000; from kilo to exa."""
    units = {"": 1, "b": 1, "byte": 1, "bytes": 1}
    prefixes = (("k", "kilo", "kibi"), ("m", "mega", "mebi"), ("g", "giga", "gibi"), ("t", "tera", "tebi"),
                ("p", "peta", "pebi"), ("e", "exa", "exbi"))
    for power, (letter, decimal, binary) in enumerate(prefixes, start=1):
        units |= dict.fromkeys((letter, letter + "i", letter + "ib", binary + "byte", binary + "bytes"), 1024**power)
        units |= dict.fromkeys((letter + "b", decimal + "byte", decimal + "bytes"), 1000**power)
    return units


_SIZE_UNITS = _size_units()
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
_DURATION_UNITS = {
    "": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "millis": 1e-3, "milliseconds": 1e-3,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}


def parse_size(value) -> int:
    """Bytes from an int or a string such as `8MiB`; ValueError says what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 8MiB, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE.match(str(value))
    unit = match and match.group(2).lower()
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 512KiB, 8MiB or 20GiB, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


_EPOCH = datetime.datetime(2000, 1, 1)


def parse_duration(value) -> float:
    """Seconds from a number (seconds), a string, or pyhocon's reading of `60s`: a timedelta, or a
    dateutil relativedelta when dateutil happens to be installed."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 60s, got {value!r}")
    if isinstance(value, datetime.timedelta) or type(value).__name__ == "relativedelta":
        return ((_EPOCH + value) - _EPOCH).total_seconds()
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    match = _DURATION.match(str(value).lower())
    if not match or match.group(2) not in _DURATION_UNITS:
        raise ValueError(f"expected a duration such as 500ms, 60s or 5m, got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_ttl(value) -> float:
    """A duration as `parse_duration` reads it, or `never` (gcsfuse's -1): trusted for as long as mounted."""
    if isinstance(value, str) and value.strip().lower() == "never":
        return math.inf
    return parse_duration(value)


def format_ttl(seconds: float) -> str:
    return "never" if seconds == math.inf else f"{seconds:g}s"


def format_size(size: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _SIZE_UNITS[unit.lower()]
        if size >= scale:
            return f"{size / scale:g}{unit}"
    return f"{size}B"


def parse_listen(value) -> tuple[str, int]:
    """(host, port) of `host:port`, `[v6-address]:port` or `:port` (every address)."""
    host, colon, port = str(value).rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port such as 127.0.0.1:9464, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
