"""The flag tables of ``python -m export3d.train`` agree with TrainConfig (once an assert in ``build_parser``)."""

import dataclasses

from export3d.train import CHOICES, HELP, SWITCHES, TYPES
from export3d.training.config import TrainConfig


def test_every_flag_is_a_config_field_with_a_help_text():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    flags = [*TYPES, *SWITCHES]
    assert [name for name in flags if name not in fields] == [], "flags that TrainConfig has no field for"
    assert [name for name in flags if not HELP.get(name)] == [], "flags without a help text"
    assert [name for name in SWITCHES if fields[name].type not in ("bool", bool)] == [], "non-bool switches"
    assert set(CHOICES) <= set(TYPES) and set(HELP) <= set(flags), "choices or help for flags that do not exist"
