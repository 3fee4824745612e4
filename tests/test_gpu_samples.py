"""scripts/gpu_samples.py: nvidia-smi's samples parsed, summarised over a timing's window, and taken beside a block
(a stand-in nvidia-smi on PATH: no GPU needed)."""

import os
import stat
import time
from datetime import datetime

import pytest

from scripts.gpu_samples import GpuSamples, describe, nvidia_smi_id, parse, summarize


def _line(t: float, mhz: int, watts: float, reasons: int) -> str:
    stamp = datetime.fromtimestamp(t).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
    return f"{stamp}, {mhz}, {watts}, 700.00, 0x{reasons:016x}"


def test_samples_are_parsed_and_summarised_over_the_window():
    t0 = 1_800_000_000.0
    text = "\n".join([
        "timestamp, clocks.current.sm [MHz], power.draw [W], power.limit [W], clocks_event_reasons.active",
        _line(t0, 1980, 120.0, 0x1),  # before the window
        _line(t0 + 1.0, 1980, 650.0, 0x0),
        _line(t0 + 1.1, 1500, 700.0, 0x4),
        _line(t0 + 1.2, 1800, 690.0, 0x4),
        _line(t0 + 1.3, 1700, 680.0, 0x4 | 0x20),
        "2026/12/06 23:31:05.358, [N/A], [N/A], 700.00, 0x0000000000000000",  # not measured: skipped
        _line(t0 + 3.0, 1980, 80.0, 0x1),  # after it
    ])
    samples = parse(text)
    assert len(samples) == 6 and samples[2].sm_mhz == 1500 and samples[2].reasons == 0x4
    stats = summarize(samples, t0 + 0.5, t0 + 2.0)
    assert stats == dict(samples=4, sm_mhz_median=1750.0, sm_mhz_p10=1500, sm_mhz_min=1500, sm_mhz_max=1980,
                         watts_median=685.0, watts_limit=700.0, power_capped=0.75, thermal=0.25)
    line = describe(stats)
    assert "median 1750 MHz" in line and "range 1500-1980" in line and "685 W of 700" in line
    assert "power cap in 75%" in line and "heat in 25%" in line
    assert summarize(samples, t0 + 5, t0 + 6) == {"samples": 0} and "no samples" in describe({"samples": 0})


def test_the_device_is_named_as_nvidia_smi_knows_it(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvidia_smi_id(0) == "0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-abc")
    assert nvidia_smi_id(0) == "3" and nvidia_smi_id(1) == "GPU-abc"


def test_samples_are_taken_beside_a_block(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/bash\n"
                    "echo \"$@\" > \"$(dirname \"$0\")/args\"\n"
                    "while true; do echo \"$(date +'%Y/%m/%d %H:%M:%S.%3N'), 1755, 690.5, 700.00, 0x0000000000000004\";"
                    " sleep 0.05; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpu = GpuSamples("1", interval_ms=50)
    with gpu:
        start = time.time()
        time.sleep(0.4)
        end = time.time()
        with pytest.raises(RuntimeError, match="once the block has ended"):
            gpu.summary(start, end)
    stats = gpu.summary(start, end)
    assert stats["samples"] >= 3 and stats["sm_mhz_median"] == 1755 and stats["power_capped"] == 1.0
    args = (tmp_path / "args").read_text()
    assert "--id=1" in args and "--format=csv,noheader,nounits" in args and "-lms 50" in args


def test_without_nvidia_smi_the_flag_is_refused_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="--gpu-samples: nvidia-smi is not on PATH"):
        GpuSamples()


def test_an_nvidia_smi_that_stops_on_its_own_is_an_error_with_its_words(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/bash\necho \'Field "clocks_event_reasons.active" is not a valid field to query.\'\nexit 2\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match=r"stopped with status 2 .*not a valid field"):
        with GpuSamples():
            time.sleep(0.2)
