"""Per-participant GPU memory caps: the arithmetic, the pre-flight packing check, and
(on a CUDA machine) that a cap really makes an allocation over it fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from actors.participant.gpu_memory import apply_cap, caps_fit, describe_oom, memory_cap_fraction

ROOT = Path(__file__).resolve().parents[1]


def test_module_imports_without_torch():
    code = "import sys, actors.participant.gpu_memory; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cap_is_the_num_gpus_share_by_default():
    assert memory_cap_fraction(0.25, None, 80.0) == pytest.approx(0.25 - 0.5 / 80)  # room for its CUDA context
    assert memory_cap_fraction(1.0, None, 80.0) == 1.0
    assert memory_cap_fraction(2.0, None, 80.0) == 1.0  # the allocator's fraction is per card


def test_cap_in_gb_is_a_fraction_of_the_card():
    assert memory_cap_fraction(0.25, 10.0, 80.0) == pytest.approx(0.125)
    assert memory_cap_fraction(0.25, 80.0, 80.0) == 1.0


@pytest.mark.parametrize(("num_gpus", "gb", "match"), [
    (0.5, 100.0, r"gpu_memory_gb=100 exceeds the card's 80 GB"),
    (0.5, 0.0, r"gpu_memory_gb=0 must be > 0"),
    (0.5, -4.0, r"gpu_memory_gb=-4 must be > 0"),
    (0.0, None, r"num_gpus=0"),
    (-1.0, 8.0, r"num_gpus=-1"),
])
def test_cap_errors_name_the_numbers(num_gpus, gb, match):
    with pytest.raises(ValueError, match=match):
        memory_cap_fraction(num_gpus, gb, 80.0)


def test_caps_that_fit_their_cards():
    four = [(f"p{i}", 0.25, None) for i in range(4)]
    assert caps_fit(four, 80.0, 1) is None
    assert caps_fit([("a", 0.5, 30.0), ("b", 0.5, 49.0)], 80.0, 1) is None
    assert caps_fit([(f"p{i}", 0.5, 39.5) for i in range(4)], 80.0, 2) is None
    assert caps_fit([("cpu", 0.0, None), ("gpu", 1.0, None)], 80.0, 1) is None


def test_caps_over_a_card_name_participants_caps_and_card():
    message = caps_fit([("a", 0.25, 30.0), ("b", 0.25, 30.0), ("c", 0.25, 30.0)], 80.0, 1)
    assert message is not None
    for part in ("a (30 GB)", "b (30 GB)", "c (30 GB)", "80 GB", "90 GB"):
        assert part in message


def test_caps_follow_rays_placement_by_num_gpus_not_by_cap():
    """Ray puts two 0.5-GPU participants on each card whatever their caps; 50 GB caps
    then overflow an 80 GB card even though four such caps would fit on three cards."""
    message = caps_fit([(f"p{i}", 0.5, 50.0) for i in range(4)], 80.0, 3)
    assert message is not None and "p0 (50 GB)" in message and "p1 (50 GB)" in message


def test_caps_refuse_what_ray_cannot_place():
    assert "p2" in caps_fit([("p0", 1.0, None), ("p1", 1.0, None), ("p2", 0.5, None)], 80.0, 2)
    assert "whole" in caps_fit([("big", 1.5, None)], 80.0, 4)
    assert "gpu_memory_gb=8 needs num_gpus > 0" in caps_fit([("cpu", 0.0, 8.0)], 80.0, 1)
    assert "gpu_memory_gb=90 exceeds" in caps_fit([("x", 0.5, 90.0)], 80.0, 1)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_apply_cap_is_a_no_op_on_cpu(device):
    apply_cap(0.1, device)  # a CPU-only torch would raise if it reached torch.cuda
    assert torch.ones(1024, 1024, device=device).sum() == 1024 * 1024


def test_describe_oom_names_participant_cap_and_request():
    exc = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB")
    message = describe_oom("site-7", 4.0, exc)
    assert "site-7" in message and "4 GB" in message and "2.00 GiB" in message
    assert "site-7" in describe_oom("site-7", 4.0, RuntimeError("CUDA error"))


_CAPPED = textwrap.dedent("""
    import torch
    from actors.participant.gpu_memory import apply_cap, describe_oom
    total = torch.cuda.get_device_properties(0).total_memory
    apply_cap((1 << 30) / total, "cuda:0")  # 1 GiB
    small = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    try:
        torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    except torch.OutOfMemoryError as exc:
        print("OOM:", describe_oom("p0", 1.0, exc))
    else:
        print("allocated past the cap")
""")


@pytest.mark.gpu
def test_cap_makes_an_allocation_over_it_fail():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    done = subprocess.run([sys.executable, "-c", _CAPPED], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "OOM: p0 ran out of GPU memory under its cap of 1 GB: it tried to allocate 2.00 GiB" in done.stdout


def test_caps_leave_each_process_room_for_its_cuda_context():
    """Caps that sum to the whole card leave no memory for the processes' CUDA contexts."""
    message = caps_fit([("a", 0.5, 40.0), ("b", 0.5, 40.0)], 80.0, 1)
    assert message is not None and "CUDA context" in message and "81 GB > 80 GB" in message
    with pytest.raises(ValueError, match="no room beside the process's CUDA context"):
        memory_cap_fraction(0.001, None, 80.0)
