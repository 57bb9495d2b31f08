"""CPU, memory and process limits for local workloads through cgroup v1, where the host
offers it: one group per workload under `vre/` in the memory, cpu, cpuacct and pids
hierarchies; what it used is read back when it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from portal.compute import Resources

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
PERIOD_US = 100_000


@dataclass(frozen=True)
class Usage:
    """What a workload's group used: CPU time, peak memory, and whether it met its memory limit."""

    cpu_seconds: float
    memory_peak_bytes: int
    oom_killed: bool


def available(root: Path = ROOT) -> bool:
    """Whether every controller is mounted (v1) and this process may create groups in it."""
    return all((root / c / "cgroup.procs").exists() and os.access(root / c, os.W_OK)
               for c in CONTROLLERS)


def group_dirs(workload_id: str, root: Path = ROOT) -> dict[str, Path]:
    return {c: root / c / "vre" / workload_id for c in CONTROLLERS}


def create(workload_id: str, resources: Resources, root: Path = ROOT) -> dict[str, Path]:
    """Make the workload's groups with the flavor's limits; the `cgroup.procs` files to join."""
    dirs = group_dirs(workload_id, root)
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    memory = resources.memory_mib * 1024 * 1024
    _write(dirs["memory"] / "memory.limit_in_bytes", memory)
    swap = dirs["memory"] / "memory.memsw.limit_in_bytes"
    if swap.exists():
        _write(swap, memory)
    _write(dirs["memory"] / "memory.swappiness", 0, missing_ok=True)
    _write(dirs["cpu"] / "cpu.cfs_period_us", PERIOD_US)
    _write(dirs["cpu"] / "cpu.cfs_quota_us", max(1000, int(resources.cpus * PERIOD_US)))
    _write(dirs["pids"] / "pids.max", resources.pids)
    return {c: p / "cgroup.procs" for c, p in dirs.items()}


def pids(workload_id: str, root: Path = ROOT) -> list[int]:
    """Every process in the workload's group."""
    procs = group_dirs(workload_id, root)["pids"] / "cgroup.procs"
    try:
        return [int(line) for line in procs.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def kill_all(workload_id: str, sig: int = signal.SIGKILL, root: Path = ROOT) -> None:
    """Signal every process of the workload, again until none is left (a fork race)."""
    for _ in range(20):
        found = pids(workload_id, root)
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig != signal.SIGKILL:
            return
        time.sleep(0.05)


def usage(workload_id: str, root: Path = ROOT) -> Usage:
    """What the workload's groups recorded."""
    dirs = group_dirs(workload_id, root)
    cpu_ns = _read_int(dirs["cpuacct"] / "cpuacct.usage")
    peak = _read_int(dirs["memory"] / "memory.max_usage_in_bytes")
    oom = False
    control = dirs["memory"] / "memory.oom_control"
    if control.exists():
        fields = dict(line.split() for line in control.read_text().splitlines() if " " in line)
        oom = int(fields.get("oom_kill", "0")) > 0
    if not oom:
        oom = _read_int(dirs["memory"] / "memory.failcnt") > 0 and peak >= _read_int(
            dirs["memory"] / "memory.limit_in_bytes") - 4096 * 64
    return Usage(cpu_seconds=cpu_ns / 1e9, memory_peak_bytes=peak, oom_killed=oom)


def remove(workload_id: str, root: Path = ROOT) -> None:
    """Drop the workload's groups once it ended (kernel refuses while a process is left)."""
    for path in group_dirs(workload_id, root).values():
        with contextlib.suppress(FileNotFoundError, OSError):
            path.rmdir()


def _write(path: Path, value: int, missing_ok: bool = False) -> None:
    try:
        path.write_text(str(value))
    except FileNotFoundError:
        if not missing_ok:
            raise


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0
