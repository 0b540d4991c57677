"""The daemon's log: where it goes (a file reopened once logrotate moved it, syslog, stderr), its level, and
SIGUSR2's toggle of debug lines."""
import logging
import logging.handlers
import os
import signal
import stat
import sys
from collections.abc import Callable

import trio

log = logging.getLogger("fsmount")


def setup_logging(log_file: str | None, level: int, cache_dir: str, foreground: bool) -> str | None:
    """fsmount's lines from LEVEL up go to LOG_FILE, else stderr in the FOREGROUND, else syslog, else
    CACHE_DIR/fsmount.log. Returns the log file, if the log goes to one."""
    if log_file:
        handler = logging.handlers.WatchedFileHandler(log_file)  # reopened once logrotate moved it away
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
    elif stat.S_ISSOCK(_mode_or_zero("/dev/log")):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.ident = "fsmount: "
    else:
        os.makedirs(cache_dir, exist_ok=True)
        log_file = os.path.join(cache_dir, "fsmount.log")
        handler = logging.handlers.WatchedFileHandler(log_file)
    if not isinstance(handler, logging.handlers.SysLogHandler):
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    set_log_level(level)
    if log_file and not foreground:
        print(f"fsmount: logging to {log_file}", file=sys.stderr)
    return log_file


def set_log_level(level: int):
    """fsmount's own lines from LEVEL up. The libraries' own info and debug lines name every request, signatures and
    signed URLs among them (botocore's, urllib3's), or run to dozens of lines a request (Azure's): only their
    warnings are logged."""
    logging.getLogger().setLevel(max(level, logging.WARNING))
    log.setLevel(level)


async def toggle_debug_on_signal(configured: Callable[[], int], task_status=trio.TASK_STATUS_IGNORED):
    """SIGUSR2 turns fsmount's debug lines on, and the next one back to CONFIGURED() (info where that is debug), as
    mountpoint-s3 does. The libraries' own stay at warnings: their debug lines carry signatures."""
    with trio.open_signal_receiver(signal.SIGUSR2) as signals:
        task_status.started()
        async for _ in signals:
            if log.level == logging.DEBUG:
                log.info("SIGUSR2: debug logging off")
                level = configured()
                set_log_level(logging.INFO if level == logging.DEBUG else level)
            else:
                set_log_level(logging.DEBUG)
                log.info("SIGUSR2: debug logging on")


def _mode_or_zero(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0
