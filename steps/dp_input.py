"""DeePMD-kit training inputs: a template from ``templates/`` + user overrides + lamflow's data.

Users know DeePMD-kit's JSON; lamflow does not invent another model language. A template is a
complete ``dp train`` input without data paths; overrides are deep-merged into it (a ``null``
value deletes a key); lamflow fills in ``type_map``, the systems, the step count and the seeds.
The multi-task input is derived from a single-task template so that pretraining and
fine-tuning share one descriptor definition.
"""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .errors import InputError


def template_names() -> list[str]:
    return sorted(
        p.name[: -len(".json")]
        for p in resources.files("lamflow.templates").iterdir()
        if p.name.endswith(".json")
    )


def load_template(name_or_path: str | Path) -> dict[str, Any]:
    """A template by name (``dpa3``, ``se_e2_a``, ...) or a path to a user's JSON file."""
    text = str(name_or_path)
    if text.endswith(".json") or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise InputError(text, "template file not found")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(text, f"is not valid JSON ({exc})") from None
    if text not in template_names():
        raise InputError("template", f"unknown template '{text}'; expected one of {template_names()} or a .json path")
    return json.loads(resources.files("lamflow.templates").joinpath(f"{text}.json").read_text())


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``overrides``; ``None`` removes a key."""
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _fit_schedule(config: dict[str, Any], numb_steps: int) -> None:
    """Keep an exponential schedule meaningful for short runs (decay_steps < numb_steps)."""
    lr = config.get("learning_rate", {})
    if lr.get("type", "exp") == "exp" and lr.get("decay_steps", 0) * 10 > numb_steps:
        lr["decay_steps"] = max(1, numb_steps // 10)
    training = config["training"]
    training["save_freq"] = min(training.get("save_freq", numb_steps), numb_steps)
    training["disp_freq"] = min(training.get("disp_freq", 100), max(1, numb_steps // 10))


def _data(systems: list[Path], batch_size: Any) -> dict[str, Any]:
    return {"systems": [str(Path(s).resolve()) for s in systems], "batch_size": batch_size}


def render_single(
    template: dict[str, Any],
    overrides: dict[str, Any],
    type_map: list[str],
    train: list[Path],
    valid: list[Path],
    numb_steps: int,
    seed: int,
) -> dict[str, Any]:
    config = deep_merge(template, overrides)
    config["model"]["type_map"] = list(type_map)
    training = config["training"]
    batch = training.get("training_data", {}).get("batch_size", "auto")
    training["training_data"] = _data(train, batch)
    if valid:
        training["validation_data"] = _data(valid, batch) | {"numb_btch": 1}
    else:
        training.pop("validation_data", None)
    training["numb_steps"] = numb_steps
    training["seed"] = seed
    seed_model(config["model"], seed)
    _fit_schedule(config, numb_steps)
    return config


def seed_model(model: dict[str, Any], seed: int) -> None:
    """Every initialisation seed of the model set from ``seed``.

    The templates (like DeePMD-kit's examples) fix ``descriptor.seed`` and ``fitting_net.seed``;
    ``training.seed`` alone only reshuffles the batches. An ensemble of students would then start
    from the same weights, agree with each other to 1e-6 eV/Å while all being far from the
    teacher, and its deviation would select nothing (measured: 40-step Si students, deviation
    3e-6, real error 1.3 eV/Å). dpgen2 draws every model's seeds at random for the same reason.
    """
    for key in ("descriptor", "fitting_net"):
        if isinstance(model.get(key), dict):
            # a hybrid descriptor takes no seed of its own (DeePMD-kit: unknown key); its members do
            members = model[key].get("list", []) if model[key].get("type") == "hybrid" else [model[key]]
            for member in members:
                member.setdefault("seed", seed)
    for _, node in _mappings(model):
        if "seed" in node:
            node["seed"] = seed


def _mappings(node: Any, path: tuple[str | int, ...] = ()):
    """Every mapping in a DeePMD-kit input, with its path (keys, list indices), parents first."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _mappings(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _mappings(value, (*path, index))


def render_multitask(
    template: dict[str, Any],
    overrides: dict[str, Any],
    type_map: list[str],
    branches: dict[str, dict[str, Any]],
    numb_steps: int,
    seed: int,
) -> dict[str, Any]:
    """One shared descriptor, one fitting net and loss per branch, ``model_prob`` from weights.

    ``branches`` maps a branch name to ``{"train": [...], "valid": [...], "weight": w}`` and, for
    multi-task fine-tuning, ``"finetune_head"``: where a new branch starts.
    """
    single = deep_merge(template, overrides)
    model = single["model"]
    batch = single["training"].get("training_data", {}).get("batch_size", "auto")
    config = {k: v for k, v in single.items() if k not in ("model", "loss", "training")}
    config["model"] = {
        "shared_dict": {"type_map_all": list(type_map), "shared_descriptor": model["descriptor"]},
        "model_dict": {
            name: {
                "type_map": "type_map_all",
                "descriptor": "shared_descriptor",
                "fitting_net": copy.deepcopy(model["fitting_net"]),
                **({"finetune_head": b["finetune_head"]} if b.get("finetune_head") else {}),
            }
            for name, b in branches.items()
        },
    }
    config["loss_dict"] = {name: copy.deepcopy(single["loss"]) for name in branches}
    training = {k: v for k, v in single["training"].items() if k not in ("training_data", "validation_data")}
    training["model_prob"] = {name: float(b.get("weight", 1.0)) for name, b in branches.items()}
    training["data_dict"] = {}
    for name, b in branches.items():
        entry = {"training_data": _data(b["train"], batch)}
        if b.get("valid"):
            entry["validation_data"] = _data(b["valid"], batch) | {"numb_btch": 1}
        training["data_dict"][name] = entry
    training["numb_steps"] = numb_steps
    training["seed"] = seed
    seed_model(config["model"], seed)
    config["training"] = training
    _fit_schedule(config, numb_steps)
    return config


def _auto_sel(descriptor: dict[str, Any]) -> list[tuple[str | int, ...]]:
    """Where a descriptor leaves a neighbour count to DeePMD-kit (``"sel": "auto"``, ``"auto:1.1"``,
    ``nsel``/``e_sel``/``a_sel`` of the repinit/repformer/repflow blocks, the members of a hybrid)."""
    return [(*path, key) for path, node in _mappings(descriptor) for key, value in node.items()
            if "sel" in key and isinstance(value, str) and value.startswith("auto")]


def _counted_sel(descriptor: dict[str, Any], type_map: list[str], systems: list[str]) -> dict[str, Any]:
    """The descriptor with its ``auto`` neighbour counts resolved by DeePMD-kit's own rule (max
    neighbours in the data × 1.1, rounded up to 4)."""
    from deepmd.dpmodel.model.base_model import BaseModel
    from deepmd.utils.data_system import get_data

    data = get_data({"systems": systems, "batch_size": 1}, 0, type_map, None)
    single = {"type_map": type_map, "descriptor": copy.deepcopy(descriptor), "fitting_net": {}}
    return BaseModel.update_sel(data, type_map, single)[0]["descriptor"]


def _copy_sel(descriptor: dict[str, Any], source: dict[str, Any], paths: list[tuple[str | int, ...]]) -> list[str]:
    resolved = []
    for path in paths:
        value = _get(source, path)
        _set(descriptor, path, copy.deepcopy(value))
        resolved.append(f"descriptor.{'.'.join(map(str, path))}={value}")
    return resolved


def _set(node: Any, path: tuple[str | int, ...], value: Any) -> None:
    _get(node, path[:-1])[path[-1]] = value


def share_auto_sel(config: dict[str, Any], pretrained: Callable[[], dict[str, Any] | None]) -> list[str]:
    """Resolve a shared descriptor's ``auto`` neighbour counts once, for every branch.

    ``dp --pt train`` resolves ``sel: auto`` per branch from that branch's data, so a descriptor
    shared by a Cu branch and a CuAu branch gets two ``sel`` and training dies on a tensor-size
    mismatch (DeePMD-kit 3.2, se_e2_a). The counts are taken from the checkpoint a fine-tuning
    starts from (``pretrained()``: its descriptor, which the new input must match), else counted
    by DeePMD-kit's own rule over all branches' training data together. Returns the resolved keys
    (``descriptor.sel=[60, 16]``) for the log."""
    if "shared_dict" not in config["model"]:
        return []
    descriptor = config["model"]["shared_dict"]["shared_descriptor"]
    paths = _auto_sel(descriptor)
    if not paths:
        return []
    source = pretrained()
    if source is None or not all(_has(source, p) for p in paths):
        type_map = config["model"]["shared_dict"]["type_map_all"]
        systems = [s for d in config["training"]["data_dict"].values() for s in d["training_data"]["systems"]]
        source = _counted_sel(descriptor, type_map, systems)
    return _copy_sel(descriptor, source, paths)


def keep_sel(config: dict[str, Any], start: dict[str, Any]) -> list[str]:
    """Pin a single-task descriptor's ``auto`` neighbour counts to those of the model training
    starts from (``start``: its descriptor).

    The loop's next student continues from the previous one (``dp --pt train --init-model``),
    which loads tensors whose shapes its ``sel`` set. DeePMD-kit resolves ``sel: auto`` afresh
    from the data, and the data grow denser as exploration goes hotter or under pressure
    (measured, Si, NPT to 1800 K: 40 neighbours became 48), so training died on a size mismatch.
    dpgen2 keeps one ``sel`` for a whole run; so does lamflow, the first student's. Where the new
    data hold more neighbours than that, DeePMD-kit keeps the nearest ones and says so in its log
    ("sel ... is not enough"; a student meant for denser states wants a larger ``sel`` or
    ``auto:1.5`` from the start). Returns the pinned keys; none where ``start`` is a different
    descriptor."""
    descriptor = config["model"]["descriptor"]
    paths = [p for p in _auto_sel(descriptor) if _has(start, p) and _kind(start, p) == _kind(descriptor, p)]
    return _copy_sel(descriptor, start, paths)


def _get(node: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


def _kind(descriptor: dict[str, Any], path: tuple[str | int, ...]) -> list[str]:
    """The descriptor types along ``path`` (a hybrid, then its member): counts copy only between
    the same kinds."""
    kinds, node = [], descriptor
    for key in path:
        if isinstance(node, dict) and "type" in node:
            kinds.append(str(node["type"]).lower())
        node = node[key]
    return kinds


def _has(node: Any, path: tuple[str | int, ...]) -> bool:
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return False
    return not (isinstance(node, str) and node.startswith("auto"))


# --- DeePMD-kit's own input check ------------------------------------------------------------

_KEY = re.compile(r"(?:undefined key|flag key|key) `([^`]+)`")
_SHORT = [  # dargs' wording -> one short phrase
    (re.compile(r"^undefined key `[^`]+` is not allowed in strict mode\.\s*(?:Did you mean: (.+))?$"),
     lambda m: "unknown key" + (f" (did you mean {m[1].rstrip('?')}?)" if m[1] else "")),
    (re.compile(r"^key `[^`]+` gets wrong value type, (.*)$"), lambda m: "wrong type, " + m[1]),
    (re.compile(r"^get invalid choice `([^`]+)` for flag key `[^`]+`\.\s*(?:Did you mean: (.+))?$"),
     lambda m: f"invalid choice {m[1]!r}" + (f" (did you mean {m[2].rstrip('?')}?)" if m[2] else "")),
    (re.compile(r"^key `[^`]+` is required .*not found\.?$"), lambda m: "required key missing"),
]


def check_input(config: dict[str, Any], where: str) -> dict[str, Any]:
    """Run ``dp --pt train``'s own input check (compat update, shared-dict expansion for
    multi-task, dargs' strict ``normalize``) on a rendered input, without touching its data;
    returns the input as DeePMD-kit will read it (its defaults filled in).

    A misspelt descriptor key in the overrides then fails in seconds, before the teacher work,
    as ``where: model.descriptor.rcutt: unknown key (did you mean rcut?)``, instead of a dargs
    traceback from ``dp train`` an hour later.
    """
    from dargs.dargs import ArgumentError
    from deepmd.utils.argcheck import normalize
    from deepmd.utils.compat import update_deepmd_input

    cfg = copy.deepcopy(config)  # deepmd's preprocessing changes its input in place
    for key in ("model", "training"):
        if not isinstance(cfg.get(key), dict):
            raise InputError(where, f"{key}: required section missing")
    multi_task = "model_dict" in cfg["model"]
    refs: dict[tuple[str, str], str] = {}
    if multi_task:
        from deepmd.pt.utils.multi_task import preprocess_shared_params

        branches = cfg["model"]["model_dict"]
        refs = {(b, k): v.split(":")[0] for b, br in branches.items() if isinstance(br, dict)
                for k, v in br.items() if k in ("descriptor", "fitting_net") and isinstance(v, str)}
        try:
            cfg["model"], _ = preprocess_shared_params(cfg["model"])
        except Exception as exc:  # a bad shared reference or an unknown shared descriptor type
            raise InputError(where, "model.shared_dict: " + " ".join(str(exc).split())) from None
    try:
        normalized = normalize(update_deepmd_input(cfg, warning=False, dump=None), multi_task=multi_task)
    except ArgumentError as exc:
        parts = [p for p in exc.path.split("/") if p]
        if len(parts) >= 4 and parts[:2] == ["model", "model_dict"] and (parts[2], parts[3]) in refs:
            parts = ["model", "shared_dict", refs[(parts[2], parts[3])], *parts[4:]]
        msg = " ".join(str(exc.message).split())
        key = _KEY.search(msg)
        if key and (not parts or parts[-1] != key[1]):
            parts.append(key[1])
        for pattern, short in _SHORT:
            if found := pattern.match(msg):
                msg = short(found)
                break
        raise InputError(where, f"{'.'.join(parts) or '(top level)'}: {msg}") from None
    except Exception as exc:  # deepmd's own validators raise plain errors
        raise InputError(where, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    for key, smooth, cut in _cutoffs(normalized.get("model", {})):
        if not 0 <= smooth < cut:
            raise InputError(where, f"{key}_smth: {smooth} must be at least 0 and below {key.rsplit('.', 1)[-1]} "
                                    f"({cut} Å): the switch from full to no interaction lies between them")
    return normalized


def largest_cutoff(model: dict[str, Any]) -> float:
    """Å: how far the model's descriptor sees (the largest of its cut-offs; 0 if it names none)."""
    return max((cut for _, _, cut in _cutoffs(model)), default=0.0)


def _cutoffs(model: dict[str, Any]):
    """Every cut-off with its smoothing start (``rcut``/``rcut_smth``, DPA-3's ``e_rcut``/
    ``e_rcut_smth``, ...), after DeePMD-kit has filled in its defaults. DeePMD-kit's argcheck
    checks types only; a smoothing start at or beyond the cut-off trains a model whose switch
    runs backwards, with no error anywhere."""
    for path, node in _mappings(model, ("model",)):
        for key, value in node.items():
            smooth = node.get(f"{key}_smth")
            if key.endswith("rcut") and isinstance(smooth, (int, float)) and isinstance(value, (int, float)):
                yield ".".join(map(str, (*path, key))), float(smooth), float(value)
