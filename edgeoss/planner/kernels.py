"""How fast the engines' MoE kernels run on each CPU vector ISA, as fractions of a profile's `cpu_gflops`.

A profile's `cpu_gflops` is llama.cpp-class quantized-matmul throughput (profiles/README.md), so llama.cpp's
experts run at fraction 1. ONNX Runtime's QMoE kernels are slower, by an amount that depends on the encoding and
on the ISA the kernel dispatches on. Each fraction is measured: the FLOP of one gpt-oss-20b-sized MoE layer
(E=32, H=I=2880, k=4) over the kernel's time, divided by the cpu_gflops of the machine that timed it (our
2-core AVX-512 EPYC build machine, 2 threads: 2 x 68 GFLOP/s), for one token (decode) and for 64 (prefill).
Timings: onnxruntime 1.32.0, ../shared/notes/onnx.md "MXFP4 in ORT 1.32"; "no AVX-512" is the same machine
with ORT_QMOE_CPU_DISABLE_AVX512=1, which makes the kernel take the path a CPU without AVX-512 takes.

The fp4 kernel has two tiers (read from the 1.32.0 wheels' machine code, the source being too large to fetch
here): an AVX-512 kernel (F, DQ, BW and VL; an E2M1 lookup by vpermps, fp32 multiply-adds), chosen when the CPU
has AVX-512 and ORT_QMOE_CPU_DISABLE_AVX512 is not "1", and otherwise a scalar loop (table lookup per weight, no
SIMD, no SGEMM). The aarch64 wheel's fp4 code is that scalar loop too (no NEON instructions), so arm64 and avx2
share the measured no-AVX-512 fraction. The int4 kernel is MLAS's 4-bit QNBit GEMM, which has AVX-512, AVX2 and
NEON kernels (moe_quantization_cpu.cc: "NEON/AVX2/AVX512 backends"): its AVX-512 fractions stand for every ISA
(estimate; on this machine disabling AVX-512 left int4 at 16 ms per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

MEASURED_ON_GFLOPS = 2 * 68.0  # cpu_gflops of the machine that timed the kernels (profiles/README.md)
LAYER_FLOP_PER_TOKEN = 2 * 4 * (2880 * 5760 + 2880 * 2880)  # k=4 experts: gate/up [5760, 2880] + down [2880, 2880]
PREFILL_TOKENS = 64


@dataclass(frozen=True)
class KernelRate:
    """One MoE kernel on one ISA: its throughput as a fraction of cpu_gflops, decoding and prefilling."""

    decode: float
    prefill: float
    source: str

    @classmethod
    def timed(cls, decode_ms: float, prefill_ms: float, source: str) -> "KernelRate":
        """From one layer's time at 1 and at 64 tokens on the measuring machine."""
        def fraction(tokens: int, ms: float) -> float:
            return tokens * LAYER_FLOP_PER_TOKEN / (ms * 1e-3) / (MEASURED_ON_GFLOPS * 1e9)

        return cls(fraction(1, decode_ms), fraction(PREFILL_TOKENS, prefill_ms), source)


LLAMA_CPP = KernelRate(1.0, 1.0, "llama.cpp's kernels are what cpu_gflops measures")
_FP4_AVX512 = KernelRate.timed(8.1, 138, "measured: ORT 1.32 QMoE fp4, AVX-512 path (onnx.md)")
_FP4_PORTABLE = KernelRate.timed(578, 38_000, "measured: ORT 1.32 QMoE fp4 with ORT_QMOE_CPU_DISABLE_AVX512=1 "
                                              "(onnx.md): the path CPUs without AVX-512 take")
_INT4 = KernelRate.timed(16.0, 287, "measured: ORT 1.32 QMoE int4 on AVX-512; 16 ms per layer without AVX-512 "
                                    "too (MLAS 4-bit GEMM has AVX2 and NEON kernels)")

# engine -> cpu_isa -> rate
RATES = {
    "ortgenai": {"avx512": _FP4_AVX512, "avx2": _FP4_PORTABLE, "arm64": _FP4_PORTABLE},
    "ortgenai-int4": {"avx512": _INT4, "avx2": _INT4, "arm64": _INT4},
}
SLOW_FRACTION = 0.05  # a kernel below this share of cpu_gflops is named slow in a plan's advice


def expert_kernel(engine: str, cpu_isa: str) -> KernelRate:
    """The expert kernel `engine` runs on a CPU of `cpu_isa` (llama.cpp's, and the reference's, count as 1)."""
    return RATES.get(engine, {}).get(cpu_isa, LLAMA_CPP)
