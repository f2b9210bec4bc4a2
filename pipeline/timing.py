"""How every latency in this project is measured, and what machine it was measured on.

Medians and p90s over many calls after a warm-up (the first calls pay for allocation and caches), with
`time.perf_counter_ns`. The compute peak is measured here, not assumed: a float32 NumPy matmul at one and
at all threads gives the multiply-accumulates per second this CPU can do, so a model's latency can be
read as a share of the machine's peak. NumPy only: the realtime benchmark uses it without TensorFlow.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.inference.classifier import usable_cores


def time_calls(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    """Median and p90 milliseconds of `fn()` over `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples[i] = (time.perf_counter_ns() - start) / 1e6
    return {"median_ms": float(np.median(samples)), "p90_ms": float(np.percentile(samples, 90)), "runs": runs}


def summarize_ms(samples: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"median_ms": float("nan"), "p90_ms": float("nan"), "mean_ms": float("nan")}
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean())}


def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo (empty where there is none), read once per call."""
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_info(fields: dict[str, str] | None = None) -> tuple[str, set[str]]:
    """The CPU's model name and its instruction-set flags."""
    fields = _cpuinfo() if fields is None else fields
    return fields.get("model name", platform.processor() or "unknown"), set(fields.get("flags", "").split())


def cpu_generation(fields: dict[str, str] | None = None) -> str:
    """`family 26 model 2`: hosts that all call themselves `AMD EPYC` differ by generation (Zen 2 to Zen 5),
    and with it by training speed and kernels, so a figure names it."""
    fields = _cpuinfo() if fields is None else fields
    return f"family {fields['cpu family']} model {fields['model']}" if {"cpu family", "model"} <= set(fields) else ""


def machine() -> dict[str, object]:
    """CPU model, core count and the vector extensions that decide which kernels (and speeds) a host gets."""
    fields = _cpuinfo()
    model, flags = cpu_info(fields)
    return {
        "cpu": model, "generation": cpu_generation(fields), "cores": usable_cores(),
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "amx": "amx_tile" in flags,  # Intel's matrix tiles: oneDNN's bfloat16 and int8 kernels use them
    }


def machine_name(m: dict) -> str:
    """`AMD EPYC family 26 model 2 (AVX-512 with VNNI, BF16, 2 cores)`: the CPU and the vector and matrix
    units that decide int8 and bfloat16 speed."""
    if not m:
        return "unknown"
    units = "AVX-512" + (" with VNNI" if m.get("vnni") else "") if m.get("avx512f") else "AVX2, no AVX-512"
    units += ", BF16" if m.get("bf16") else ""
    units += ", AMX" if m.get("amx") else ""
    name = " ".join(str(part) for part in (m.get("cpu", "unknown"), m.get("generation", "")) if part)
    cores = m.get("cores")
    return f"{name} ({units}, {cores} core{'' if cores == 1 else 's'})"


def compute_peak_gmacs(threads: int, size: int = 1024, repeats: int = 7) -> float:
    """Best-of-N float32 GMAC/s of a square matmul with NumPy's BLAS limited to `threads` threads.

    `OPENBLAS_CORETYPE` pins OpenBLAS to one CPU generation's kernels (some environments set `Haswell`,
    i.e. AVX2, on AVX-512 machines, halving the figure). The peak is the CPU's, so where it is set the
    matmul also runs in a child process without it, with the kernels OpenBLAS picks for this CPU, and
    the better of the two counts.
    """
    if "OPENBLAS_CORETYPE" in os.environ:
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        code = f"from pipeline.timing import _matmul_gmacs as m; print(m({threads}, {size}, {repeats}))"
        child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parents[1])
        own = float(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 and child.stdout.strip() else 0.0
        return max(own, _matmul_gmacs(threads, size, repeats))
    return _matmul_gmacs(threads, size, repeats)


def _matmul_gmacs(threads: int, size: int, repeats: int) -> float:
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return size**3 / best / 1e9
