"""Training configs refuse numbers that would train on NaN or never stop, naming the field."""

import math

import pytest

from otas.train.backbone import BackboneConfig
from otas.train.prompts import PromptConfig
from otas.train.teacher import TeacherConfig

BAD = [("lr", 0.0), ("lr", -1e-3), ("lr", math.nan), ("lr", math.inf), ("weight_decay", -0.1),
       ("weight_decay", math.nan), ("time_budget_s", 0.0), ("time_budget_s", math.nan),
       ("time_budget_s", -5.0)]  # fmt: skip


@pytest.mark.parametrize("field, value", [*BAD, ("drop_path", 1.0), ("drop_path", -0.1), ("drop_path", math.nan)])
def test_backbone_config(field, value):
    with pytest.raises(ValueError, match=field):
        BackboneConfig(**{field: value})


@pytest.mark.parametrize("field, value", BAD)
def test_prompt_config(field, value):
    with pytest.raises(ValueError, match=field):
        PromptConfig(tasks=("novel",), **{field: value})


@pytest.mark.parametrize("field, value", [b for b in BAD if b[0] != "time_budget_s"])
def test_teacher_config(field, value):
    with pytest.raises(ValueError, match=field):
        TeacherConfig(**{field: value})


def test_defaults_pass():
    BackboneConfig(), PromptConfig(tasks=("novel",)), TeacherConfig()
