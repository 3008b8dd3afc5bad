"""Each method kind is declared once (diffattr/methods/registry.py's BUILTIN, or a plugin's
``register``): its settings dataclass and the schema's ``$defs`` block of its config must agree
(same keys; required exactly where the dataclass has no default; defaults only in the dataclass),
and a declaration with an unknown need, stage, family or sign is refused."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

import pytest

from diffattr.methods.registry import BUILTIN, HELPS, KINDS, MethodKind, settings_class, settings_schema
from plans import SCHEMA

DERIVED = {"gradient": {"weights"}, "embedding": {"device"}, "select": {"select_rule"}}
"""Settings fields the DAG or the job fills in, never written in a config block."""
OPTIONAL_WITHOUT_DEFAULT = {"embedding": {"path"}}
"""Fields a block may leave out though the dataclass has no default: the DDPM encoder's ``path`` is
the full model's checkpoint, an input (a CLIP encoder's is required: diffattr.config.check_model_dirs)."""


@pytest.mark.parametrize("kind", BUILTIN, ids=lambda k: k.kind)
def test_the_schema_block_of_each_kind_agrees_with_its_settings_dataclass(kind):
    block = SCHEMA["$defs"][f"method_{kind.kind}"]
    cls = settings_class(kind)
    assert cls is not None, f"{kind.kind} declares no settings dataclass"
    names = {f.name for f in fields(cls)} - DERIVED.get(kind.kind, set())
    assert set(block["properties"]) - {"kind"} == names
    no_default = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    required = set(block.get("required", [])) - {"kind"}
    assert required <= no_default  # the schema requires no key the class defaults (that default would be dead)
    assert no_default - required <= OPTIONAL_WITHOUT_DEFAULT.get(kind.kind, set())
    assert not [key for key, sub in block["properties"].items() if "default" in sub]  # defaults: the dataclass's


def test_the_schema_names_exactly_the_built_in_kinds():
    methods = SCHEMA["properties"]["methods"]["additionalProperties"]
    builtin = {k.kind for k in BUILTIN}
    assert set(methods["properties"]["kind"]["enum"]) == builtin
    assert {rule["if"]["properties"]["kind"]["const"] for rule in methods["allOf"]} == builtin
    assert builtin <= set(KINDS)


@pytest.mark.parametrize("change, message", [({"needs": ("data", "weather")}, "unknown needs"),
                                             ({"stages": ("lambda", "dance")}, "unknown stages"),
                                             ({"families": frozenset({"gan"})}, "unknown families"),
                                             ({"sign": 0}, "has sign 0")])
def test_a_declaration_with_an_unknown_need_stage_family_or_sign_is_refused(change, message):
    args = {"kind": "x", "sign": HELPS, "needs": ("data",), "scorer": "m:f", "description": "d"} | change
    with pytest.raises(ValueError, match=message):
        MethodKind(**args)


@dataclass(frozen=True)
class Knobs:
    count: int
    rate: float = 0.5
    name: str = "a"
    flags: list[str] | None = None


def test_a_settings_dataclass_becomes_a_closed_schema_block(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules[__name__], "Knobs", Knobs, raising=False)
    kind = MethodKind("knobs", HELPS, ("data",), "m:f", "d", settings=f"{__name__}:Knobs")
    schema = settings_schema(kind)
    assert schema["required"] == ["kind", "count"] and schema["additionalProperties"] is False
    assert schema["properties"]["kind"] == {"const": "knobs"}
    assert schema["properties"]["count"] == {"type": ["integer"]} and schema["properties"]["rate"] == {"type": ["number"]}
    assert schema["properties"]["flags"] == {}  # an optional list: not a plain type, any value
