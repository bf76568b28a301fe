"""The bfloat16 switch every CPU service reads at start-up."""

from __future__ import annotations

import pytest

from flywheel_common import hardware


def test_off_turns_bfloat16_off_on_any_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.delenv("FLYWHEEL_CPU_BF16", raising=False)
    assert hardware.cpu_has_fast_bf16() is True
    monkeypatch.setenv("FLYWHEEL_CPU_BF16", "off")
    assert hardware.cpu_has_fast_bf16() is False
    monkeypatch.setenv("FLYWHEEL_CPU_BF16", "auto")
    assert hardware.cpu_has_fast_bf16() is True


def test_auto_asks_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setenv("FLYWHEEL_CPU_BF16", "auto")
    assert hardware.cpu_has_fast_bf16() is False


def test_a_value_it_does_not_know_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_CPU_BF16", "sometimes")
    with pytest.raises(ValueError, match="FLYWHEEL_CPU_BF16='sometimes'"):
        hardware.cpu_has_fast_bf16()


@pytest.mark.parametrize("capability", ["avx2", "AVX2", "default"])
def test_pytorch_capped_below_avx512_computes_in_float32(
    monkeypatch: pytest.MonkeyPatch, capability: str
) -> None:
    """ATEN_CPU_CAPABILITY below AVX-512 (how an AVX2-only machine is stood in for) turns bfloat16
    off although the CPU has it; avx512 or unset leaves the CPU to decide."""
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    monkeypatch.delenv("FLYWHEEL_CPU_BF16", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
    assert hardware.cpu_has_fast_bf16() is False
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert hardware.cpu_has_fast_bf16() is True
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert hardware.cpu_has_fast_bf16() is True


def test_the_summary_names_the_processor_and_its_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_bf16"}))
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert hardware.cpu_summary().endswith("cores, AVX-512 with bfloat16")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert hardware.cpu_summary().endswith("capped at AVX2 (ATEN_CPU_CAPABILITY)")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert hardware.cpu_summary().endswith("cores, AVX2")
