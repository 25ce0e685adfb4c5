"""What the CPU can do: its model and ISA flags from /proc/cpuinfo, which reduced precisions it
runs natively, and its dense peak per precision (cores × clock × FLOP per cycle per core).

The peaks are the textbook figures for the ISA, at the clock the kernel reports (the nominal
one under a hypervisor; turbo can be higher): what a row's share of the peak is measured against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Cpu:
    model: str
    vendor: str
    family: int
    flags: frozenset[str]
    ghz: float | None

    @property
    def vector_bits(self) -> int:
        """The width of the vector datapath: AVX-512 on Intel, and on AMD from Zen 5 (family
        26); Zen 4 (family 25) runs AVX-512 as two 256-bit halves."""
        if "avx512f" in self.flags and (self.vendor != "AuthenticAMD" or self.family >= 26):
            return 512
        return 256 if "avx2" in self.flags else 128

    @property
    def bf16(self) -> str | None:
        """The ISA that runs bf16 matrix products natively, or None."""
        return next((isa for isa in ("amx_bf16", "avx512_bf16") if isa in self.flags), None)

    @property
    def int8(self) -> str | None:
        """The ISA that runs int8 dot products natively (what INT8 kernels need), or None."""
        isas = ("amx_int8", "avx512_vnni", "avx_vnni")
        return next((isa for isa in isas if isa in self.flags), None)

    def flop_per_cycle(self) -> dict[str, int | None]:
        """Dense FLOP per cycle per core by precision: two FMA pipes of `vector_bits` for fp32
        (2 FLOP per lane); a bf16 or int8 dot product packs 2 or 4 products per fp32 lane; an
        AMX tile unit does 1,024 bf16 or 2,048 int8 FLOP a cycle."""
        fp32 = 2 * (self.vector_bits // 32) * 2
        bf16 = {"amx_bf16": 1024, "avx512_bf16": 2 * fp32}.get(self.bf16 or "")
        int8 = {"amx_int8": 2048}.get(self.int8 or "", 4 * fp32 if self.int8 else None)
        return {"fp32": fp32, "bf16": bf16, "int8": int8}

    def peak_tflops(self, cores: int) -> dict[str, float | None]:
        """The dense peak of `cores` cores per precision, in TFLOP/s (None where the ISA has no
        native form, or the clock is unknown)."""
        return {
            p: cores * self.ghz * f / 1e3 if f and self.ghz else None
            for p, f in self.flop_per_cycle().items()
        }

    def describe(self, cores: int) -> dict:
        """The hardware part of a report: model, ISA flags that matter here, peaks."""
        isa = sorted(f for f in self.flags if f.startswith(("avx512", "amx", "avx_vnni", "fma")))
        return {
            "cpu": self.model,
            "vendor": self.vendor,
            "cores": cores,
            "clock_ghz": self.ghz,
            "isa": isa,
            "bf16_isa": self.bf16,
            "int8_isa": self.int8,
            "vector_bits": self.vector_bits,
            "flop_per_cycle_per_core": self.flop_per_cycle(),
            "peak_tflops": self.peak_tflops(cores),
        }


def parse_cpuinfo(text: str) -> Cpu:
    """The first processor's entry of a /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    mhz = fields.get("cpu MHz")
    return Cpu(
        model=fields.get("model name", "unknown"),
        vendor=fields.get("vendor_id", "unknown"),
        family=int(fields.get("cpu family", "0") or 0),
        flags=frozenset(fields.get("flags", "").split()),
        ghz=float(mhz) / 1e3 if mhz else None,
    )


def this_cpu() -> Cpu:
    """This machine's CPU (an empty description where /proc/cpuinfo is absent)."""
    return parse_cpuinfo(CPUINFO.read_text() if CPUINFO.is_file() else "")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
