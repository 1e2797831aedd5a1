"""The dashboard's side of an exploration: the ``explore`` kind through the command route
(refused with the reason when invalid) and the JSON state of a run's explorations."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

import retune
from retune.server import create_app
from retune.store import Store, open_store

ORIGIN = {"Origin": "http://testserver", "Content-Type": "application/json"}


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def test_explore_through_the_command_route_and_its_state(store: Store) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    client = TestClient(create_app(store, allowed_hosts={"testserver"}))
    with retune.init("web", model=model, optimizer=optimizer, store=store) as run:
        run.step(loss=1.0)
        bad = client.post(f"/api/runs/{run.id}/commands", headers=ORIGIN, json={
            "kind": "explore", "payload": {"values": {"lr": [0.1] * 2}, "steps": 3,
                                           "metric": "loss"}})  # fmt: skip
        assert bad.status_code == 422, bad.text
        assert bad.json() == {"error": "command_rejected",
                              "message": "explore's lr lists 0.1 twice"}  # fmt: skip
        payload = {"values": {"lr": [0.2, 0.05]}, "steps": 3, "metric": "loss", "then": "stay"}
        sent = client.post(f"/api/runs/{run.id}/commands", headers=ORIGIN,
                           json={"kind": "explore", "payload": payload})  # fmt: skip
        assert sent.status_code == 202, sent.text
        command = sent.json()["id"]
        pending = client.get(f"/api/commands/{command}/exploration").json()
        assert pending["status"] == "pending" and pending["spec"]["values"] == payload["values"]
        assert pending["spec"]["max_candidates"] == 16 and pending["candidates"] == []
        deadline = time.monotonic() + 60
        while store.get_command(command).status != "applied":  # the loop runs it
            assert time.monotonic() < deadline, store.get_command(command)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            run.step(loss=loss.item())
    refused, state = client.get(f"/api/runs/{run.id}/explorations").json()
    assert refused["status"] == "rejected" and refused["reason"] == "explore's lr lists 0.1 twice"
    assert state["command"] == command and state["status"] == "done"
    assert [c["values"] for c in state["candidates"]] == [{"lr": 0.2}, {"lr": 0.05}]
    assert all(c["status"] == "done" and c["steps"] == 3 for c in state["candidates"])
    assert state["continued"]["from"] == state["origin"]["checkpoint"]
    assert client.get(f"/api/commands/{command}/exploration").json() == state
    nodes = client.get(f"/api/runs/{run.id}/tree").json()
    assert nodes  # the candidates are nodes of the tree
    other = client.get("/api/commands/99999/exploration")
    assert other.status_code == 400 and other.json()["message"] == "no command with id 99999"
