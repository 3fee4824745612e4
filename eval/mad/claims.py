"""Runs that another runner on the same results file has taken (eval.mad.run).

Two runners appending to one results file (two pieces of a device call at once, scripts/device/mad_check.sh)
each skip the runs the file records when they start, but not those the other is training: two overlapping
pieces of the nineteenth session trained 105 runs twice that way. So before a job starts, its runner claims
the job's runs in <results>.claims, under a lock. A run recorded meanwhile, or claimed by another runner that
is still alive, is left out of the job. Claims of a runner that is gone (its pid no longer runs on this host)
count for nothing, so a killed runner blocks nothing; each runner drops its claims when it ends, and the file
goes with the last of them. Claims made on another host are kept: their runner cannot be checked from here.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


class RunClaims:
    def __init__(self, results: Path, recorded_keys: Callable[[], set[tuple]]):
        """`recorded_keys()` reads the run keys the results file holds now."""
        self.path = results.with_name(results.name + ".claims")
        self.recorded_keys = recorded_keys
        self.pid, self.host = os.getpid(), socket.gethostname()

    @contextmanager
    def _locked(self):
        """The claims file, open and locked; reopened if another runner removed it while we waited."""
        while True:
            f = open(self.path, "a+")
            fcntl.flock(f, fcntl.LOCK_EX)
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                break
            f.close()
        try:
            f.seek(0)
            yield f
        finally:
            f.close()

    def _held_by_another(self, claim: dict) -> bool:
        if claim["host"] != self.host:
            return True
        if claim["pid"] == self.pid:
            return False
        try:
            os.kill(claim["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True

    def claim(self, keys: list[tuple]) -> list[tuple]:
        """Claims for this runner those of `keys` that are neither recorded nor another live runner's, and
        returns them: the runs this runner may train."""
        with self._locked() as f:
            claims = [json.loads(line) for line in f.read().splitlines() if line]
            taken = {tuple(c["run"]) for c in claims if self._held_by_another(c)} | self.recorded_keys()
            free = [key for key in keys if key not in taken]
            f.write("".join(json.dumps({"run": list(key), "pid": self.pid, "host": self.host}) + "\n"
                            for key in free))
        return free

    def release(self) -> None:
        """Drops this runner's claims and those of runners that are gone; removes the file once none is left."""
        with self._locked() as f:
            kept = [line for line in f.read().splitlines() if line and self._held_by_another(json.loads(line))]
            if kept:
                f.seek(0)
                f.truncate()
                f.write("".join(line + "\n" for line in kept))
            else:
                self.path.unlink()
