"""How much memory a process may use, and how much one evaluation really takes.

Batched inference with a large teacher must never be killed for memory: the kernel's OOM killer
takes the whole process (every chunk a Prefect worker runs in its threads with it), and no
``except`` sees it coming. Two numbers size the batches, and both are easy to get wrong:

- **The budget** is what *this process* may still use: the smallest of the machine's available
  memory and the room left by every cgroup above it (a Kubernetes pod's limit, a Slurm job's
  ``--mem``), not the node's free memory. On a GPU it is the device memory left.
- **The footprint of a frame** is measured as the peak RSS growth of one evaluation. A warm heap
  fools that: memory freed by earlier batches stays in the process, gets reused, and the growth
  underestimates the frame (measured: 4.1 GB, then 3.2 GB for the same frame). So the heap is
  handed back to the kernel first (glibc's ``malloc_trim``), and the largest footprint
  ever measured for a model and a frame size is kept for the process's lifetime: a later, smaller reading never
  lowers it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_dirs(proc_cgroup: str, root: Path) -> list[tuple[Path, int]]:
    """(folder, version) of this process's memory cgroup and of each ancestor, deepest first.

    Inside a container the path in ``/proc/self/cgroup`` may not exist under the mounted root
    (a cgroup namespace shows ``/``); the root's own files then describe the container."""
    out: list[tuple[Path, int]] = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # the unified (v2) hierarchy: at the root, or under unified/ (hybrid)
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
            version = 2
        elif "memory" in controllers.split(","):
            base, version = root / "memory", 1
        else:
            continue
        node = base / rel.lstrip("/")
        while node == base or base in node.parents:
            if node.is_dir():
                out.append((node, version))
            if node == base:
                break
            node = node.parent
    return out


def cgroup_room(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> int | None:
    """Bytes the tightest cgroup above this process still allows; None when no limit applies.

    Usage counts reclaimable page cache too; the inactive file pages are subtracted, as the
    kernel would drop them before it kills anything."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    room = None
    for folder, version in _cgroup_dirs(proc_cgroup, root):
        if version == 2:
            limit, usage = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
            cache = _stat(folder / "memory.stat", "inactive_file")
        else:
            limit, usage = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
            cache = _stat(folder / "memory.stat", "total_inactive_file")
        if limit is None or usage is None or limit >= _UNLIMITED // 2:
            continue
        left = max(limit - max(usage - cache, 0), 0)
        room = left if room is None else min(room, left)
    return room


def budget() -> int | None:
    """Bytes this process may still allocate on the host: available memory, capped by its cgroups."""
    try:
        import psutil

        options = [psutil.virtual_memory().available]
    except ImportError:  # pragma: no cover - psutil comes with deepmd-kit's dependencies
        options = []
    room = cgroup_room()
    if room is not None:
        options.append(room)
    return min(options) if options else None


def gpu_budget() -> int | None:
    """Free device memory (plus what PyTorch holds in its cache), or None without a GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    except Exception:  # no CUDA runtime, no device: the host budget applies
        return None


def trim_heap() -> None:
    """Return the heap's free pages to the kernel (glibc), so RSS growth measures real allocation."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


def _status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``) in kB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss() -> int | None:
    """The process's peak resident memory (bytes) since start or the last measurement."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb * 1024


def measured(fn: Callable[[], T]) -> tuple[T, int | None]:
    """``fn()`` and the peak memory (bytes) it added, on the GPU when PyTorch uses one, else on the
    host (after trimming the heap); None where neither can be read."""
    gpu = gpu_budget() is not None
    if gpu:
        import torch

        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return out, max(torch.cuda.max_memory_allocated() - start, 0)
    trim_heap()
    before = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        before = None
    out = fn()
    peak = _status_kb("VmHWM")
    return out, None if before is None or peak is None else max(peak - before, 0) * 1024


class Calibration:
    """The largest footprint per frame measured for each (model, atom count) in this process;
    never lowered. Keyed by size, not scaled per atom: a small frame's reading is dominated by
    fixed costs and would make a large frame look many times bigger than it is."""

    def __init__(self) -> None:
        self._per_frame: dict[tuple[int, int], int] = {}

    def update(self, model: int, natoms: int, per_frame: int | None) -> None:
        if per_frame:
            key = (model, natoms)
            self._per_frame[key] = max(self._per_frame.get(key, 0), per_frame)

    def largest(self, natoms: int) -> int:
        """The largest footprint measured for an ``natoms``-atom frame, any model (0: none yet)."""
        return max((v for (_, n), v in self._per_frame.items() if n == natoms), default=0)

    def batch(self, model: int, natoms: int, cap: int, share: float = 0.5) -> int:
        """Frames per batch: at most ``cap``, and no more than ``share`` of the budget holds."""
        per_frame = self._per_frame.get((model, natoms))
        room = gpu_budget() or budget()
        if not per_frame or room is None:
            return cap
        fitting = max(1, int(share * room // per_frame))
        if fitting < cap:
            log.info("inference: %.2f GB per %d-atom frame, %.1f GB usable: batches of %d frames",
                     per_frame / 1e9, natoms, room / 1e9, fitting)
        return min(cap, fitting)


CALIBRATION = Calibration()
