"""The step catalogue: name → (parameter model, result model, function).

Engines and the CLI look steps up here, so adding a step means adding one line; the typed models
give every engine its input/output signature (dflow OP signatures, Prefect task parameters,
``lamflow step NAME --params p.json`` in a container) without per-step boilerplate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel

from . import (change_bias, check_data, evaluate, explore, import_data, label, label_md, perturb, select, speed, stability,
               teacher_label, train)


@dataclass(frozen=True)
class Step:
    name: str
    params: type[BaseModel]
    result: type[BaseModel]
    run: Callable[[BaseModel], BaseModel]
    doc: str


def _step(name, module, params, result) -> Step:
    return Step(name, params, result, module.run, (module.__doc__ or "").strip().splitlines()[0])


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        _step("label", label, label.LabelParams, label.LabelResult),
        _step("label_md", label_md, label_md.LabelMDParams, label_md.LabelMDResult),
        _step("train", train, train.TrainParams, train.TrainResult),
        Step("freeze", train.FreezeParams, train.FreezeResult, train.freeze,
             (train.freeze.__doc__ or "").strip().splitlines()[0]),
        _step("perturb", perturb, perturb.PerturbParams, perturb.PerturbResult),
        _step("explore", explore, explore.ExploreParams, explore.ExploreResult),
        _step("select", select, select.SelectParams, select.SelectResult),
        _step("teacher_label", teacher_label, teacher_label.TeacherLabelParams,
              teacher_label.TeacherLabelResult),
        _step("evaluate", evaluate, evaluate.EvaluateParams, evaluate.EvaluateResult),
        _step("speed", speed, speed.SpeedParams, speed.SpeedResult),
        _step("import_data", import_data, import_data.ImportParams, import_data.ImportResult),
        _step("change_bias", change_bias, change_bias.ChangeBiasParams, change_bias.ChangeBiasResult),
        _step("check_data", check_data, check_data.CheckDataParams, check_data.CheckDataResult),
        _step("stability", stability, stability.StabilityParams, stability.StabilityResult),
    )
}
