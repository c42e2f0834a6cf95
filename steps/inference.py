"""Batched inference with any DeePMD-kit model, shared by teacher-label and evaluate.

``deepmd.infer.DeepPot`` reads every DeePMD-kit format (``.pth`` frozen, ``.pt`` checkpoint,
``.pt2``, ``.pb``...). Frames are evaluated many at a time — loading a large teacher once and
batching is what makes teacher labelling cheap compared with dpgen2's one-frame-per-task DFT
pattern. Types are remapped by element name, so data, teacher and student may list their
elements in different orders.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import memory
from .errors import InputError, first_sentence
from .runtime import interrupt_if_stopping

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _load(path: str, mtime: float, head: str | None):
    from deepmd.infer import DeepPot

    return DeepPot(path, head=head) if head else DeepPot(path)


def load_model(path: Path, head: str | None = None):
    """A ``DeepPot`` for ``path`` (``head``: a branch of a multi-task checkpoint), with one clear
    line when the file is not a usable model."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "model file not found")
    try:
        return _load(str(path.resolve()), path.stat().st_mtime, head)
    except Exception as exc:
        raise not_a_model(path, exc) from None


def not_a_model(path: Path, exc: BaseException) -> InputError:
    """The one line for a file deepmd-kit cannot load, whichever of its loaders tried. A frozen
    ``.pb`` is what DeePMD-kit 2 and dpgen2 runs leave behind: it needs the TensorFlow backend,
    which lamflow's stack (PyTorch) does not carry, so the line says how to convert it."""
    if Path(path).suffix == ".pb" and "tensorflow" in str(exc).lower():
        return InputError(str(path), "is a TensorFlow model (DeePMD-kit 2, dpgen2), and lamflow runs DeePMD-kit's "
                                     "PyTorch backend: convert it where the TensorFlow backend is installed "
                                     f"(dp convert-backend {Path(path).name} {Path(path).stem}.pth)")
    return InputError(str(path), f"is not a DeePMD-kit model that deepmd-kit 3.2 can load ({first_sentence(exc)})")


def model_type_indices(model, atom_names: list[str], atom_types: np.ndarray, where: str) -> np.ndarray:
    model_map = list(model.get_type_map())
    missing = sorted({atom_names[t] for t in set(atom_types.tolist())} - set(model_map))
    if missing:
        raise InputError(where, f"has elements {missing} that the model does not know (its type_map is {model_map})")
    return np.array([model_map.index(atom_names[t]) for t in atom_types], dtype=int)


def predict(model, system, where: str, batch_size: int = 32):
    """Energies (nf,), forces (nf, na, 3), virials (nf, 3, 3) of a dpdata system.

    ``batch_size`` is an upper bound: the first frame is evaluated alone and its peak memory
    measured (see :mod:`lamflow.steps.memory`), and batches are sized to half of what this
    process may still use. A large teacher (DeePMD-kit's example DPA-3 takes ~4 GB per 192-atom
    frame on CPU) would otherwise be killed by the kernel's OOM killer — which no ``except``
    catches — in the middle of labelling.
    """
    types = model_type_indices(model, list(system["atom_names"]), np.asarray(system["atom_types"]), where)
    nframes, natoms = len(system), system.get_natoms()
    energies = np.empty(nframes)
    forces = np.empty((nframes, natoms, 3))
    virials = np.empty((nframes, 3, 3))
    coords = system["coords"].reshape(nframes, natoms * 3)
    cells = None if system.nopbc else system["cells"].reshape(nframes, 9)
    # Corrupted frames (non-finite coordinates) come out as NaN, so callers drop and count them.
    finite = np.all(np.isfinite(coords), axis=1)
    if cells is not None:
        finite &= np.all(np.isfinite(cells), axis=1)
    energies[:], forces[:], virials[:] = np.nan, np.nan, np.nan
    good = np.flatnonzero(finite)
    if len(good) > 1 and batch_size > 1:
        first, per_frame = memory.measured(lambda: eval_frames(model, coords, cells, types, good[:1]))
        energies[good[0]], forces[good[0]], virials[good[0]] = (a[0] for a in first)
        memory.CALIBRATION.update(id(model), natoms, per_frame)
        batch_size = memory.CALIBRATION.batch(id(model), natoms, batch_size)
        good = good[1:]
    for start in range(0, len(good), batch_size):
        interrupt_if_stopping(where)
        idx = good[start : start + batch_size]
        try:
            e, f, v = eval_frames(model, coords, cells, types, idx)
        except Exception as exc:  # one bad frame must not cost the batch: retry frame by frame
            log.warning("batch evaluation failed (%s); retrying frame by frame", exc)
            for i in idx:
                try:
                    one = eval_frames(model, coords, cells, types, [i])
                    energies[i], forces[i], virials[i] = (a[0] for a in one)
                except Exception as frame_exc:
                    log.warning("%s: frame %d could not be evaluated: %s", where, i, frame_exc)
            continue
        energies[idx], forces[idx], virials[idx] = e, f, v
    return energies, forces, virials


def eval_frames(model, coords, cells, types, idx):
    natoms = len(types)
    e, f, v = model.eval(coords[idx], None if cells is None else cells[idx], types)[:3]
    return (np.asarray(e).reshape(-1), np.asarray(f).reshape(-1, natoms, 3),
            np.asarray(v).reshape(-1, 3, 3))
