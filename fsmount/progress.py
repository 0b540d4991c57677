"""Progress of a long command: tqdm's bar on a terminal (bytes, rate, time left), else a plain line per tenth."""
import sys
import threading

import tqdm

from fsmount.units import format_size


class Progress:
    def __init__(self, total: int, label: str, verb: str, stream=sys.stderr):
        """TOTAL bytes to go; LABEL names the command, VERB what is done to the bytes ("read", "fetched")."""
        self.total, self.done = total, 0
        self._label, self._verb = label, verb
        self._stream = stream
        self._bar = tqdm.tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                              file=stream) if stream.isatty() else None
        self._tenths = 0  # shown, without a terminal
        self._note = ""
        self._lock = threading.Lock()

    def add(self, size: int, note: str | None = None):
        """SIZE more bytes are done; NOTE, if given, says how far in other terms ("3/10 files")."""
        with self._lock:
            self.done += size
            if note is not None and note != self._note:
                self._note = note
                if self._bar is not None:
                    self._bar.set_postfix_str(note, refresh=False)
            if self._bar is not None:
                self._bar.update(size)
            elif self.done * 10 // max(self.total, 1) > self._tenths:
                self._tenths = self.done * 10 // max(self.total, 1)
                share = self.done * 100 // max(self.total, 1)
                print(f"{self._label}: {share:3d}%  {format_size(self.done)} of {format_size(self.total)} {self._verb}"
                      + (f", {self._note}" if self._note else ""), file=self._stream, flush=True)

    def finish(self):
        if self._bar is not None:
            self._bar.close()
