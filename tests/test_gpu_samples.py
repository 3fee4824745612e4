"""scripts/gpu_samples.py: nvidia-smi's samples parsed, summarised over the timings' windows, and taken beside a
block (a stand-in nvidia-smi on PATH: no GPU needed); bench_attention.py records the windows of its timings."""

import os
import stat
import time
from datetime import datetime, timezone

import pytest

from scripts.gpu_samples import GpuSamples, describe, nvidia_smi_id, parse, summarize


def _line(t: float, mhz: int, watts: float, reasons: int, limit: float = 650.0) -> str:
    stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
    return f"{stamp}, {mhz}, {watts}, {limit:.2f}, 0x{reasons:016x}"


@pytest.fixture
def new_york(monkeypatch):
    """A host zone other than UTC: nvidia-smi's timestamps are read as UTC (it runs with TZ=UTC) all the same."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_samples_are_parsed_and_summarised_over_the_windows(new_york):
    t0 = 1_800_000_000.0
    inside = [(1980, 600.0, 0x0), (1500, 650.0, 0x4), (1800, 640.0, 0x4), (1700, 630.0, 0x4 | 0x20),
              (1650, 645.0, 0x4 | 0x40), (1600, 649.0, 0x4), (1850, 620.0, 0x0), (1750, 610.0, 0x4),
              (1550, 648.0, 0x4), (1900, 500.0, 0x0), (1450, 650.0, 0x4)]
    lines = ["timestamp, clocks.current.sm [MHz], power.draw [W], power.limit [W], clocks_event_reasons.active",
             _line(t0, 1980, 120.0, 0x1)]  # before the first window
    lines += [_line(t0 + 1.0 + 0.1 * i, *sample) for i, sample in enumerate(inside[:6])]
    lines.append(_line(t0 + 2.0, 1980, 90.0, 0x1))  # between the windows: idle, not counted
    lines += [_line(t0 + 3.0 + 0.1 * i, *sample) for i, sample in enumerate(inside[6:])]
    lines.append("2026/12/06 23:31:05.358, [N/A], [N/A], 650.00, 0x0000000000000000")  # not measured: skipped
    samples = parse("\n".join(lines))
    assert len(samples) == 13 and samples[2].sm_mhz == 1500 and samples[2].reasons == 0x4
    assert samples[0].time == t0  # read as UTC, not the host's zone
    stats = summarize(samples, [(t0 + 0.9, t0 + 1.6), (t0 + 2.9, t0 + 3.5)])
    assert stats == dict(samples=11, sm_mhz_median=1700.0, sm_mhz_p10=1500, sm_mhz_min=1450, sm_mhz_max=1980,
                         watts_median=640.0, watts_limit=650.0, power_capped=8 / 11, thermal=2 / 11)
    line = describe(stats)
    assert "median 1700 MHz (10th percentile 1500, range 1450-1980)" in line and "640 W of 650" in line
    assert "power cap in 73%" in line and "heat in 18%" in line
    assert summarize(samples, [(t0 + 5, t0 + 6)]) == {"samples": 0} and describe({"samples": 0}) == "no samples"


def test_the_device_is_named_by_its_uuid(monkeypatch):
    import torch

    class Props:
        uuid = "3f1d2c4b-0000-1111-2222-333344445555"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    assert nvidia_smi_id(0) == "GPU-3f1d2c4b-0000-1111-2222-333344445555"
    Props.uuid = "MIG-aaaa"
    assert nvidia_smi_id(0) == "MIG-aaaa"


def _fake_nvidia_smi(folder, body: str) -> None:
    fake = folder / "nvidia-smi"
    fake.write_text("#!/bin/bash\n" + body)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)


def test_samples_are_taken_beside_a_block(tmp_path, monkeypatch, new_york):
    _fake_nvidia_smi(tmp_path, 'echo "$@ TZ=$TZ" > "$(dirname "$0")/args"\n'
                               "while true; do echo \"$(date +'%Y/%m/%d %H:%M:%S.%3N'), 1755, 690.5, 700.00,"
                               ' 0x0000000000000004"; sleep 0.05; done\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpu = GpuSamples("GPU-abc", interval_ms=50)
    with gpu:
        start = time.time()
        time.sleep(0.4)
        end = time.time()
        with pytest.raises(RuntimeError, match="once the block has ended"):
            gpu.summary([(start, end)])
    stats = gpu.summary([(start, end)])
    assert stats["samples"] >= 3 and stats["sm_mhz_median"] == 1755 and stats["power_capped"] == 1.0
    args = (tmp_path / "args").read_text()
    assert "--id=GPU-abc" in args and "--format=csv,noheader,nounits" in args and "-lms 50" in args
    assert "TZ=UTC" in args


def test_an_nvidia_smi_that_stops_at_once_is_an_error_with_its_words(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "echo 'Field \"clocks_event_reasons.active\" is not a valid field to query.'\nexit 2\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    with pytest.raises(SystemExit, match=r"stopped with status 2: .*not a valid field"):
        with GpuSamples():
            pass
    assert set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) <= before  # its file is gone


def test_an_nvidia_smi_that_stops_during_the_timings_leaves_what_it_sampled(tmp_path, monkeypatch, capsys):
    _fake_nvidia_smi(tmp_path, "for i in 1 2 3 4 5 6 7 8; do echo \"$(date -u +'%Y/%m/%d %H:%M:%S.%3N'), 1600, 700.0, "
                               "700.00, 0x0000000000000004\"; sleep 0.05; done\necho 'Unable to determine the device "
                               "handle'\nexit 15\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with GpuSamples() as gpu:
        start = time.time() - 1
        time.sleep(0.6)
    assert gpu.summary([(start, time.time())])["samples"] >= 4
    assert "stopped with status 15 during the timings" in capsys.readouterr().err


def test_without_nvidia_smi_the_flag_is_refused_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="--gpu-samples: nvidia-smi is not on PATH"):
        GpuSamples()


def test_bench_attention_records_the_window_of_each_timing(monkeypatch):
    import scripts.bench_attention as bench

    def fake_bench(fn, **_):
        time.sleep(0.01)
        return 1.0

    monkeypatch.setattr(bench, "do_bench", fake_bench)
    first = len(bench.TIMINGS)
    before = time.time()
    bench.in_rounds({"a": (lambda: None, None), "b": (lambda: None, None)}, rounds=2)
    windows = bench.TIMINGS[first:]
    assert len(windows) == 4 and all(end - start >= 0.01 for start, end in windows)
    assert before <= windows[0][0] and all(windows[i][1] <= windows[i + 1][0] for i in range(3))
