"""benchmarks/step_profile.py: the CPU smoke run covers every part, and its kernel accounting is right."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_profile.py"


@pytest.fixture(scope="module")
def step_profile():
    spec = importlib.util.spec_from_file_location("step_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_profile"] = module  # its dataclass looks its module up while being defined
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("step_profile", None)


def test_cpu_smoke_run_records_every_part(step_profile, tmp_path, capsys):
    """--device cpu --quick: every part ends with a status (ok, or skipped for want of CUDA), figures on disk.

    resnet20 rather than resnet56 and one thread: the smoke run checks the code paths, not the speed, and must
    stay quick on a shared 2-core machine."""
    out = tmp_path / "profile.json"
    step_profile.main(["--device", "cpu", "--quick", "--model", "resnet20", "--threads", "1", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert list(doc["parts"]) == list(step_profile.PARTS)
    status = {name: part["status"] for name, part in doc["parts"].items()}
    assert status["eager"] == status["graph"] == status["ema"] == status["levers"] == "ok", doc["parts"]
    assert all(status[p] == "skipped: needs CUDA" for p in step_profile.CUDA_ONLY), status
    eager, graph = doc["parts"]["eager"], doc["parts"]["graph"]
    assert eager["train_step_ms"] > 0 and eager["loop_ms"] > 0
    assert graph["captured"] is False and graph["replay"] == "skipped: needs CUDA" and graph["loop_ms"] > 0
    # The dry runs did run their code paths: the sync part trained an epoch and ended it (evaluation, last.pt).
    sync = doc["parts"]["sync"]
    assert sync["epoch_record"]["epoch"] == 2 and sync["evaluate_s"] > 0 and sync["checkpoint_s"] > 0
    assert doc["parts"]["batch256"]["batch_big"]["batch"] == 2 * doc["meta"]["batch_size"]
    ema = doc["parts"]["ema"]
    assert ema["averaged_model_ms"] > 0 and ema["ema_ms"] > 0 and ema["graph"] == "skipped: needs CUDA"
    assert "step profile" in capsys.readouterr().out  # the rich table


def test_kernel_classes(step_profile):
    cls = step_profile.kernel_class
    assert cls("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x64x64") == "conv forward"
    assert cls("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "conv data-grad"
    assert cls("sm90_xmma_wgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "conv weight-grad"
    assert cls("void at::native::batch_norm_collect_statistics_channels_last_kernel<float>") == "batch norm"
    assert cls("void at::native::multi_tensor_apply_kernel<FusedSgdMathFunctor<float, 2>>") == "optimizer"
    assert cls("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>") == (
        "elementwise and casts"
    )
    assert cls("void cunn_SoftMaxForward<4, float>") == "loss"
    assert cls("Memcpy DtoD (Device -> Device)") == "memcpy/memset"
    assert cls("some_unknown_kernel") == "other"


def test_kernel_summary_busy_idle_and_split(step_profile):
    # Two steps: kernels (name, start us, duration us); B overlaps A (another stream), then a 30 us gap.
    kernels = [
        ("sm90_xmma_fprop_a", 0.0, 10.0),
        ("batch_norm_b", 5.0, 10.0),
        ("elementwise_c", 45.0, 5.0),
        ("sm90_xmma_fprop_a", 50.0, 10.0),
    ]
    s = step_profile.kernel_summary(kernels, steps=2)
    assert s["kernels_per_step"] == 2
    assert s["kernel_ms_per_step"] == pytest.approx(35 / 2 / 1000)
    assert s["busy_ms_per_step"] == pytest.approx((15 + 15) / 2 / 1000)  # [0, 15] and [45, 60]
    assert s["span_ms_per_step"] == pytest.approx(60 / 2 / 1000)
    assert s["idle_ms_per_step"] == pytest.approx(30 / 2 / 1000)
    assert s["largest_gap_us"] == 30 and s["gaps_over_10us_per_step"] == 0.5
    assert list(s["by_class"]) == ["conv forward", "batch norm", "elementwise and casts"]  # by time
    assert s["by_class"]["conv forward"]["share"] == pytest.approx(20 / 35)
    assert s["top"][0]["kernel"] == "sm90_xmma_fprop_a" and s["top"][0]["calls_per_step"] == 1
    assert step_profile.kernel_summary([], steps=3)["kernels_per_step"] == 0


def test_sync_warnings_listed_by_site_and_phase(step_profile):
    """The collector keeps the stack of each sync warning and groups it by the cnnzoo line and the phase."""
    records: list[dict] = []

    def train_one_epoch():  # named like the loop, so its warnings count as loop steps
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", stacklevel=1)

    def end_epoch():
        warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
        warnings.warn("an unrelated warning", stacklevel=1)

    with step_profile.caught_warnings(records):
        train_one_epoch()
        end_epoch()
    assert len(records) == 4
    sites = step_profile.sync_sites(records)
    assert [s["count"] for s in sites["loop steps"]] == [3]
    assert [s["count"] for s in sites["epoch end"]] == [1]
    assert "train_one_epoch" in sites["loop steps"][0]["site"]
