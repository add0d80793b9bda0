"""What the CPU runs fast (`cobra_app.model.ops.cpu_capability`): ISA levels from the CPU flags, the COBRA_CPU_ISA cap
(the hook that makes this machine an AVX2-only one), and the bf16 verdict from features or the measured probe."""

import pytest

from cobra_app.model.ops import cpu_capability as cc


@pytest.fixture
def fresh_verdict():
    cc.bf16_verdict.cache_clear()
    yield cc.bf16_verdict
    cc.bf16_verdict.cache_clear()


@pytest.mark.parametrize(("flags", "level"), [
    ({"sse2"}, "baseline"), ({"avx2"}, "baseline"), ({"avx2", "fma"}, "avx2"),
    ({"avx2", "fma", "avx512f"}, "avx2"), ({"avx2", "fma", "avx512f", "avx512bw"}, "avx512"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"}, "avx512_bf16"),
])
def test_isa_level_from_the_cpu_flags(monkeypatch, flags, level):
    monkeypatch.setattr(cc, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(cc.platform, "machine", lambda: "x86_64")
    assert cc.host_isa() == level


def test_other_architectures_run_the_baseline(monkeypatch):
    monkeypatch.setattr(cc, "cpu_flags", lambda: frozenset({"avx2", "fma", "asimd"}))
    monkeypatch.setattr(cc.platform, "machine", lambda: "aarch64")
    assert cc.host_isa() == "baseline"


def test_the_cap_lowers_the_level_never_raises_it(monkeypatch):
    monkeypatch.setattr(cc, "host_isa", lambda: "avx512")
    for cap, level in (("avx2", "avx2"), ("baseline", "baseline"), ("avx512_bf16", "avx512"), ("", "avx512")):
        monkeypatch.setenv(cc.ISA_ENV, cap)
        assert cc.effective_isa() == level
    monkeypatch.setenv(cc.ISA_ENV, "sse9")
    with pytest.raises(ValueError, match="COBRA_CPU_ISA"):
        cc.effective_isa()


def test_an_x86_cpu_without_avx512_bf16_is_slow_without_probing(monkeypatch, fresh_verdict):
    monkeypatch.setattr(cc, "host_isa", lambda: "avx512_bf16")
    monkeypatch.setenv(cc.ISA_ENV, "avx2")  # this machine as an AVX2-only one
    monkeypatch.setattr(cc, "probe_matmul", lambda: pytest.fail("no probe needed"))
    verdict = fresh_verdict()
    assert not verdict.fast and "avx2" in verdict.reason and cc.ISA_ENV in verdict.reason


@pytest.mark.parametrize(("bf16", "fp32", "fast"), [(350.0, 100.0, True), (24.0, 85.0, False), (110.0, 100.0, False)])
def test_elsewhere_the_probe_decides(monkeypatch, fresh_verdict, bf16, fp32, fast):
    monkeypatch.delenv(cc.ISA_ENV, raising=False)
    monkeypatch.setattr(cc, "host_isa", lambda: "avx512_bf16")
    monkeypatch.setattr(cc, "probe_matmul", lambda: cc.MatmulProbe(bf16, fp32))
    verdict = fresh_verdict()
    assert verdict.fast is fast and f"{bf16:.0f} GFLOP/s against {fp32:.0f}" in verdict.reason


def test_the_probe_measures_both_dtypes():
    probe = cc.probe_matmul(repeats=1)
    assert probe.bf16_gflops > 0 and probe.fp32_gflops > 0
    assert probe.bf16_speedup == probe.bf16_gflops / probe.fp32_gflops
