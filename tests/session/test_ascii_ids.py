"""Ids and group indexes are ASCII digits: int() also reads '٣' and raises on '²'."""

from __future__ import annotations

import pytest
import torch

from retune.control import discover_optimizer, validate
from retune.errors import InvalidArgument, NodeNotFound
from retune.session._tree import parse_node


@pytest.mark.parametrize("ref", ["n²", "n٣", "²", "٣", "n-1", "n"])
def test_a_node_in_other_digits_is_not_found(ref: str) -> None:
    with pytest.raises(NodeNotFound, match="is not a node"):
        parse_node(ref)


def test_ascii_nodes_parse() -> None:
    assert (parse_node("n3"), parse_node("12"), parse_node(4)) == (3, 12, 4)


@pytest.mark.parametrize("group", ["²", "٣", "1²"])
def test_a_group_in_other_digits_is_a_clear_error(group: str) -> None:
    model = torch.nn.Linear(2, 1)
    specs = discover_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(InvalidArgument, match="no param group named"):
        validate(specs, "lr", 0.2, group)
