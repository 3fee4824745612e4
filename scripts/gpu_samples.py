"""The GPU's SM clock, power draw and the reasons it gives for holding its clocks, sampled beside a benchmark.

A Hopper board timed over and over runs at its power limit, with SM clocks that move from one 100 ms sample to the
next, so a kernel's time depends on the clocks it met (docs/benchmarks.md, "Rounds at the power limit"). A
benchmark that samples the GPU can say which it met:

    with GpuSamples(nvidia_smi_id(device)) as gpu:
        ...                      # the timings, each between time.time() stamps (start, end)
    print(describe(gpu.summary([(start, end), ...])))

`nvidia-smi --query-gpu=... -lms 100` runs beside the timings (in UTC, so that its timestamps compare with
time.time() whatever the host's zone) and appends to a file, which is read once it has stopped.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone

QUERY = "timestamp,clocks.sm,power.draw,power.limit,clocks_event_reasons.active"
# clocks_event_reasons bits (nvidia-smi --help-query-gpu)
POWER_CAP = 0x4  # software power cap
THERMAL = 0x20 | 0x40  # software and hardware thermal slowdown


@dataclass
class Sample:
    time: float  # seconds since the epoch
    sm_mhz: float
    watts: float
    limit_watts: float
    reasons: int


def parse(text: str) -> list[Sample]:
    """Samples from `nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits` output, its timestamps in UTC;
    lines with a field it could not measure ("[N/A]") are skipped."""
    samples = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) != 5:
            continue
        try:
            stamp = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
            samples.append(Sample(stamp.timestamp(), float(row[1]), float(row[2]), float(row[3]),
                                  int(row[4].strip(), 16)))
        except ValueError:
            continue
    return samples


def summarize(samples: list[Sample], windows: list[tuple[float, float]]) -> dict:
    """Statistics of the samples taken inside the windows ((start, end) pairs of time.time()): SM clock median,
    tenth percentile and range (MHz), median power and the limit (W), and the share of samples held by the power cap
    or by heat."""
    inside = [s for s in samples if any(start <= s.time <= end for start, end in windows)]
    if not inside:
        return {"samples": 0}
    clocks = sorted(s.sm_mhz for s in inside)
    return {
        "samples": len(inside),
        "sm_mhz_median": statistics.median(clocks),
        "sm_mhz_p10": clocks[int(0.1 * (len(clocks) - 1))],
        "sm_mhz_min": clocks[0],
        "sm_mhz_max": clocks[-1],
        "watts_median": statistics.median(s.watts for s in inside),
        "watts_limit": inside[-1].limit_watts,
        "power_capped": sum(bool(s.reasons & POWER_CAP) for s in inside) / len(inside),
        "thermal": sum(bool(s.reasons & THERMAL) for s in inside) / len(inside),
    }


def describe(stats: dict) -> str:
    """One line for a benchmark's log."""
    if not stats.get("samples"):
        return "no samples"
    return (f"{stats['samples']} samples: SM clock median {stats['sm_mhz_median']:.0f} MHz (10th percentile "
            f"{stats['sm_mhz_p10']:.0f}, range {stats['sm_mhz_min']:.0f}-{stats['sm_mhz_max']:.0f}), power median "
            f"{stats['watts_median']:.0f} W of {stats['watts_limit']:.0f}, held by the power cap in "
            f"{100 * stats['power_capped']:.0f}% of samples, by heat in {100 * stats['thermal']:.0f}%")


def nvidia_smi_id(device: int) -> str:
    """nvidia-smi's name for this process's CUDA device `device`: its UUID (CUDA's device order and
    CUDA_VISIBLE_DEVICES need not match nvidia-smi's indices)."""
    import torch

    uuid = str(torch.cuda.get_device_properties(device).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


class GpuSamples:
    """Samples the GPU nvidia-smi calls `gpu` (an index or a UUID) every `interval_ms` while the block runs."""

    def __init__(self, gpu: str = "0", interval_ms: int = 100):
        if shutil.which("nvidia-smi") is None:
            raise SystemExit("--gpu-samples: nvidia-smi is not on PATH; it samples the GPU's clocks and power")
        self.command = ["nvidia-smi", f"--id={gpu}", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                        "-lms", str(interval_ms)]
        self.samples: list[Sample] = []
        self._proc = None

    def __enter__(self) -> GpuSamples:
        fd, self._path = tempfile.mkstemp(suffix=".csv")
        os.close(fd)
        try:
            with open(self._path, "a") as out:  # the child keeps its own descriptor, appending
                self._proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env={**os.environ, "TZ": "UTC"})
            time.sleep(0.3)  # its first sample, or its error
            if self._proc.poll() is not None:  # e.g. an id it does not know, a field this driver lacks
                raise SystemExit(f"--gpu-samples: `{' '.join(self.command)}` stopped with status "
                                 f"{self._proc.returncode}: {self._text().strip()[:400]}")
        except BaseException:
            os.unlink(self._path)
            raise
        return self

    def __exit__(self, *exc) -> None:
        stopped = self._proc.poll() is not None
        try:
            if not stopped:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            text = self._text()
        finally:
            os.unlink(self._path)
        self.samples = parse(text)
        # the timings are done: say what went wrong with the samples rather than lose them
        if stopped:
            print(f"--gpu-samples: nvidia-smi stopped with status {self._proc.returncode} during the timings; "
                  f"its last words: {text.strip()[-400:]}", file=sys.stderr)
        elif text.strip() and not self.samples:
            print(f"--gpu-samples: no line of nvidia-smi's output could be read, e.g. {text.splitlines()[0][:200]!r}",
                  file=sys.stderr)

    def _text(self) -> str:
        with open(self._path) as f:
            return f.read()

    def summary(self, windows: list[tuple[float, float]]) -> dict:
        """summarize() of the samples inside the windows; after the block has ended."""
        if self._proc is None or self._proc.returncode is None:
            raise RuntimeError("GpuSamples.summary: the samples are read once the block has ended")
        return summarize(self.samples, windows)
