"""FLOPs per token and MFU against values worked out by hand."""

import pytest

from tunearena.training.throughput import flops_per_token, mfu, peak_tflops


def test_full_fine_tuning_counts_six_flops_per_parameter_and_token():
    # 2N forward + 2N activation gradients + 2N weight gradients.
    assert flops_per_token(1_000_000, 1_000_000) == 6_000_000


def test_lora_counts_weight_gradients_for_the_adapters_only():
    # 4 x 1e9 for the frozen model's forward and backward, 2 x 1e7 for the adapters' weights.
    assert flops_per_token(1_000_000_000, 10_000_000) == 4_020_000_000


def test_peak_is_matched_most_specific_first():
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0  # not the SXM part's 989
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("cpu") is None


def test_mfu_of_a_1b_model_on_one_h100():
    # 6 x 1.1e9 FLOPs per token x 75,000 tokens/s = 4.95e14 FLOP/s; 989e12 peak: 0.5005...
    assert mfu(75_000, 1_100_000_000, 1_100_000_000, 1, "NVIDIA H100 80GB HBM3") == (
        pytest.approx(4.95e14 / 989e12))


def test_mfu_divides_by_every_gpu_and_is_unknown_off_the_table():
    # LoRA on two A100s: (4 x 1e9 + 2 x 1e7) x 20,000 = 8.04e13 over 2 x 312e12.
    assert mfu(20_000, 1_000_000_000, 10_000_000, 2, "NVIDIA A100-SXM4-40GB") == (
        pytest.approx(8.04e13 / 624e12))
    assert mfu(20_000, 1_000_000_000, 10_000_000, 2, "Tesla T4") is None
