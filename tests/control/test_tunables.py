"""Discovery of optimizer hyperparameters and the validation rules."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from retune.control import TunableSpec, discover_optimizer, validate
from retune.errors import InvalidArgument


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
         {"lr", "momentum", "dampening", "weight_decay", "nesterov"}),
        (torch.optim.Adam, {"lr", "betas", "eps", "weight_decay"}),
        (torch.optim.AdamW, {"lr", "betas", "eps", "weight_decay"}),
        (torch.optim.RMSprop, {"lr", "alpha", "eps", "weight_decay", "momentum"}),
        (torch.optim.Adagrad, {"lr", "lr_decay", "eps", "weight_decay"}),
    ],
)  # fmt: skip
def test_every_numeric_hyperparameter_is_discovered(optimizer, expected) -> None:
    specs = discover_optimizer(optimizer(_params()))
    assert {s.name for s in specs} >= expected
    names = {s.name for s in specs}
    assert not names & {"foreach", "maximize", "capturable", "amsgrad", "params", "initial_lr"}


def test_groups_by_index_and_name() -> None:
    groups: list[dict[str, Any]] = [
        {"params": _params(), "name": "body"},
        {"params": _params(), "lr": 0.5},
    ]
    opt = torch.optim.SGD(groups, lr=0.1)
    specs = discover_optimizer(opt)
    lr = next(s for s in specs if s.name == "lr")
    assert lr.groups == ("body", None)
    assert validate(specs, "lr", 0.2, "body") == 0.2
    assert validate(specs, "lr", 0.2, 1) == 0.2
    with pytest.raises(
        InvalidArgument, match=r"group 2 does not exist; the groups are: 0 \(body\), 1"
    ):
        validate(specs, "lr", 0.2, 2)
    with pytest.raises(InvalidArgument, match="no param group named 'head'"):
        validate(specs, "lr", 0.2, "head")


def test_tensor_lr_is_a_float_tunable() -> None:
    opt = torch.optim.Adam(_params(), lr=torch.tensor(0.01), capturable=True)
    lr = next(s for s in discover_optimizer(opt) if s.name == "lr")
    assert lr.kind == "float"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("lrr", 0.1, "unknown tunable 'lrr'; valid names: betas, eps, lr, weight_decay"),
        ("lr", "abc", "lr expects a float, got 'abc'"),
        ("lr", True, "lr expects a float, got True"),
        ("lr", math.nan, "lr must be finite, got nan"),
        ("lr", math.inf, "lr must be finite, got inf"),
        ("lr", -0.1, "lr must be >= 0, got -0.1"),
        ("betas", (0.9, 1.0), r"betas\[1\] must be >= 0 and < 1, got 1"),
        ("betas", 0.9, "betas expects 2 numbers"),
        ("betas", (0.9,), "betas expects 2 numbers, got 1"),
        ("weight_decay", -1e-4, "weight_decay must be >= 0"),
        ("eps", 0, "eps must be > 0"),
    ],
)
def test_invalid_values_get_a_clear_reason(name: str, value: object, message: str) -> None:
    specs = discover_optimizer(torch.optim.Adam(_params()))
    with pytest.raises(InvalidArgument, match=message):
        validate(specs, name, value)


def test_valid_values_are_normalized() -> None:
    specs = discover_optimizer(torch.optim.Adam(_params()))
    assert validate(specs, "lr", 1) == 1.0 and isinstance(validate(specs, "lr", 1), float)
    assert validate(specs, "betas", [0.8, 0.9]) == (0.8, 0.9)


def test_specs_round_trip_through_plain_data() -> None:
    specs = discover_optimizer(torch.optim.SGD(_params(), lr=0.1, momentum=0.9))
    assert [TunableSpec.from_dict(s.to_dict()) for s in specs] == specs


def _spec(specs: list[TunableSpec], name: str) -> TunableSpec:
    return next(s for s in specs if s.name == name)


def test_integer_entries_are_ints_known_float_keys_stay_floats() -> None:
    specs = discover_optimizer(torch.optim.LBFGS(_params(), lr=1, max_iter=10))
    assert {s.name: s.kind for s in specs} == {
        "lr": "float",
        "max_iter": "int",
        "max_eval": "int",
        "tolerance_grad": "float",
        "tolerance_change": "float",
        "history_size": "int",
    }
    assert validate(specs, "max_iter", 5.0) == 5 and isinstance(
        validate(specs, "max_iter", 5.0), int
    )
    with pytest.raises(InvalidArgument, match=r"max_iter expects an int, got 2\.5"):
        validate(specs, "max_iter", 2.5)
    with pytest.raises(InvalidArgument, match="history_size must be >= 1, got 0"):
        validate(specs, "history_size", 0)
    sgd = discover_optimizer(torch.optim.SGD(_params(), lr=1, momentum=0, weight_decay=0))
    assert {_spec(sgd, k).kind for k in ("lr", "momentum", "weight_decay")} == {"float"}


def test_optimizer_specific_bounds() -> None:
    rmsprop = discover_optimizer(torch.optim.RMSprop(_params()))
    with pytest.raises(InvalidArgument, match="alpha must be >= 0 and < 1, got 1"):
        validate(rmsprop, "alpha", 1.0)
    asgd = discover_optimizer(torch.optim.ASGD(_params()))
    assert validate(asgd, "alpha", 1.5) == 1.5  # ASGD's alpha is a power, not a decay rate
    adadelta = discover_optimizer(torch.optim.Adadelta(_params()))
    assert validate(adadelta, "rho", 1.0) == 1.0
    adagrad = discover_optimizer(torch.optim.Adagrad(_params()))
    assert "initial_accumulator_value" not in {s.name for s in adagrad}  # read once, at init
    with pytest.raises(InvalidArgument, match="lr_decay must be >= 0"):
        validate(adagrad, "lr_decay", -1.0)


def test_bool_flags_only_where_safe() -> None:
    sgd = discover_optimizer(torch.optim.SGD(_params(), lr=0.1, momentum=0.9, nesterov=True))
    assert _spec(sgd, "nesterov").kind == "bool"
    assert validate(sgd, "nesterov", False) is False
    with pytest.raises(InvalidArgument, match="nesterov expects true or false, got 1"):
        validate(sgd, "nesterov", 1)
    adam = discover_optimizer(torch.optim.Adam(_params(), amsgrad=True))
    assert "amsgrad" not in {s.name for s in adam}


def test_string_knobs() -> None:
    specs = [TunableSpec(name="mode", kind="str")]
    assert validate(specs, "mode", "fast") == "fast"
    with pytest.raises(InvalidArgument, match="mode expects a string, got 3"):
        validate(specs, "mode", 3)


def test_int_for_a_float_is_converted_and_group_names_resolve() -> None:
    opt = torch.optim.SGD(
        [{"params": _params(), "name": "body"}, {"params": _params(), "name": "head"}], lr=0.1
    )
    specs = discover_optimizer(opt)
    assert validate(specs, "lr", 2, "head") == 2.0
    assert validate(specs, "lr", 2, "1") == 2.0
    with pytest.raises(InvalidArgument, match=r"the groups are: 0 \(body\), 1 \(head\)"):
        validate(specs, "lr", 2, "tail")
    with pytest.raises(InvalidArgument, match="group -1 does not exist"):
        validate(specs, "lr", 2, -1)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("lr", "must be a mapping"),
        ({"kind": "float"}, "lacks its 'name'"),
        ({"name": "lr"}, "lacks its 'kind'"),
        ({"name": "lr", "kind": "float", "low": "0"}, "low is '0', not int or float or None"),
        ({"name": "lr", "kind": "float", "low_inclusive": 1}, "low_inclusive is 1, not bool"),
        ({"name": "lr", "kind": "float", "length": True}, "length is True, not int or None"),
        ({"name": "lr", "kind": "float", "groups": "ab"}, "groups is 'ab'"),
        ({"name": "lr", "kind": "float", "groups": [1]}, "groups [1]"),
    ],
)
def test_a_damaged_stored_spec_is_a_value_error_that_says_what_is_wrong(
    entry: Any, says: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        TunableSpec.from_dict(entry)


def test_a_command_to_a_run_with_damaged_tunables_is_recorded_rejected_with_the_reason(
    tmp_path: Path,
) -> None:
    from retune.control import submit
    from retune.errors import CommandRejected
    from retune.store import open_store

    with open_store(str(tmp_path / "s.db")) as store:
        run = store.create_run("r", config={}, meta={}, tunables=[{"name": "lr"}])
        with pytest.raises(CommandRejected, match=r"damaged list of tunables.*lacks its 'kind'"):
            submit(store, run.id, "set", {"values": {"lr": 0.1}}, source="cli")
        (command,) = store.list_commands(run.id)
        assert command.status == "rejected" and "damaged" in (command.reason or "")


def test_a_knob_s_doc_is_a_string_and_a_stored_null_doc_reads_as_empty() -> None:
    """Runs of an earlier version stored ``doc: null`` for ``Knob(doc=None)``: commands to
    them must still be checked, not rejected as damaged."""
    from retune.control import Knob

    assert Knob("dropout", 0.1, doc=None).spec.doc == ""
    with pytest.raises(InvalidArgument, match="doc must be a string"):
        Knob("dropout", 0.1, doc=5)  # type: ignore[arg-type]
    assert TunableSpec.from_dict({"name": "dropout", "kind": "float", "doc": None}).doc == ""


def test_a_knob_s_bounds_may_exclude_their_ends() -> None:
    from retune.control import Knob

    factor = Knob("factor", 0.5, bounds=(0, 1), inclusive=(False, True))
    assert factor.spec.describe_bounds() == "> 0 and <= 1"
    assert validate([factor.spec], "factor", 1.0) == 1.0
    with pytest.raises(InvalidArgument, match="factor must be > 0 and <= 1, got 0"):
        validate([factor.spec], "factor", 0.0)
    stored = TunableSpec.from_dict(factor.spec.to_dict())  # as a command is checked when sent
    assert not stored.low_inclusive and stored.high_inclusive
    with pytest.raises(InvalidArgument, match="must be > 0 and <= 1, got 0"):
        Knob("factor", 0.0, bounds=(0, 1), inclusive=(False, True))  # the initial value too
    with pytest.raises(InvalidArgument, match="inclusive must be a pair of booleans"):
        Knob("factor", 0.5, bounds=(0, 1), inclusive=(0, 1))  # type: ignore[arg-type]
