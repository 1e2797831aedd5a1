"""retune compare and /api/runs/{run}/compare: the hyperparameter diff and aligned branches."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient

from retune._compare import compare, flat_hyperparameters
from retune.cli import main
from retune.errors import InvalidArgument, NodeNotFound
from retune.server import create_app
from retune.store import Store, open_store
from tests.export.conftest import TUNABLES, branch_points, retune_cli, values


def test_cli_compare_of_a_real_training_shows_what_differs_and_aligned_metrics(
    trained: str,
) -> None:
    text = retune_cli("compare", "trained", "n1", "n2", "n3", "--store", trained, "--rows", "3")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    header = next(line for line in lines if line.startswith("  HYPERPARAMETER"))
    assert header.split() == ["HYPERPARAMETER", "n1", "n2", "n3"]
    rows = {
        line[2:].split()[0]: line for line in lines if line[:2] in ("* ", "  ") and "  " in line
    }
    assert rows["lr"].startswith("* ") and rows["lr"].split()[2:] == ["0.1", "0.01", "0.1"]
    assert rows["weight_decay"].startswith("* ")
    assert rows["weight_decay"].split()[2:] == ["0", "0", "0.01"]
    assert rows["momentum"].startswith("  ") and rows["momentum"].split()[1:] == ["0.9"] * 3
    differing = [line[2:].split()[0] for line in lines if line.startswith("* ")]
    assert differing == ["lr", "weight_decay"]  # differing rows first
    assert "loss: the branches part at step 6" in lines

    out = retune_cli("compare", "trained", "n2", "n3", "--store", trained, "--json",
                     "--metric", "loss")  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [n["id"] for n in data["nodes"]] == ["n2", "n3"]
    assert {h["name"]: h["differs"] for h in data["hyperparameters"]}["lr"] is True
    assert list(data["metrics"]) == ["loss"]
    with open_store(trained) as store:
        run_id = store.get_run("trained").id
        n2 = branch_points(store, run_id, 2, "loss")
        n3 = branch_points(store, run_id, 3, "loss")
    loss = data["metrics"]["loss"]
    assert loss["branches"]["n2"]["steps"] == [s for s, _ in n2]
    assert loss["branches"]["n2"]["values"] == [v for _, v in n2]
    assert loss["branches"]["n3"]["last"] == {"step": n3[-1][0], "value": n3[-1][1]}
    shared = [s for s in sorted({s for s, _ in n2} & {s for s, _ in n3}) if s >= 6]
    assert loss["aligned"]["steps"] == shared  # every shared step from the split (6) on
    assert shared[0] == 6
    assert loss["aligned"]["values"]["n2"] == [dict(n2)[s] for s in shared]
    assert loss["aligned"]["values"]["n3"] == [dict(n3)[s] for s in shared]
    assert loss["aligned"]["values"]["n2"][0] == loss["aligned"]["values"]["n3"][0]
    assert loss["aligned"]["values"]["n2"][-1] != loss["aligned"]["values"]["n3"][-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["n1", "n9"], "no node n9"),
        (["n1", "n1"], "each node may be named once"),
        (["n1", "x"], "is not a node"),
        (["n1", "n2", "--metric", "nope"], "no metric 'nope'"),
    ],
)
def test_cli_compare_refuses_bad_input_in_one_line(
    trained: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", "trained", *args, "--store", trained]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and message in out.err


def test_flat_hyperparameters_split_groups_only_where_they_differ() -> None:
    same = flat_hyperparameters([values((0.1, 0.1)), values((0.01, 0.01))], TUNABLES)
    assert same[0] == {"lr": 0.1, "weight_decay": 0.0, "betas": [0.9, 0.999], "clip": 1.0}
    assert same[1]["lr"] == 0.01
    split = flat_hyperparameters([values((0.1, 0.1)), values((0.1, 0.01))], TUNABLES)
    assert (split[0]["lr[body]"], split[0]["lr[head]"]) == (0.1, 0.1)
    assert (split[1]["lr[body]"], split[1]["lr[head]"]) == (0.1, 0.01)
    assert "lr" not in split[1] and split[1]["weight_decay"] == 0.0
    unnamed = flat_hyperparameters([{"lr": [0.1, 0.2]}], [{"name": "lr", "groups": [None, None]}])
    assert unnamed == [{"lr[0]": 0.1, "lr[1]": 0.2}]


def test_compare_diverge_step_and_nan_and_open_branches(tree_store: tuple[Store, str]) -> None:
    store, run_id = tree_store
    result = compare(store, run_id, ["n1", 4, "3"], metrics=["loss"])
    assert result.labels == ["n1", "n4", "n3"] and result.diverge_step == 10
    assert [r.name for r in result.differing()] == ["clip", "lr[head]", "weight_decay"]
    n1, n4, n3 = result.branches["loss"]
    assert n4.steps.tolist() == [*range(1, 11), *range(11, 21), *range(21, 28)]
    assert math.isnan(n1.values[4]) and n1.values[24] == math.inf
    steps, columns = result.aligned("loss", rows=100)
    assert steps.tolist() == list(range(10, 25))
    assert [c[0] for c in columns] == [1 / 11] * 3
    assert result.aligned("loss", rows=0)[0].tolist() == []
    assert result.aligned("loss", rows=3)[0].tolist() == [10, 17, 24]  # spread, last included
    data = result.to_dict(max_points=3)
    assert data["metrics"]["loss"]["branches"]["n1"]["total"] == 30
    assert len(data["metrics"]["loss"]["branches"]["n1"]["steps"]) <= 3
    with pytest.raises(NodeNotFound):
        compare(store, run_id, ["n7"])
    with pytest.raises(InvalidArgument):
        compare(store, run_id, [])


def test_api_compare_serves_the_diff_and_downsampled_series(tree_store: tuple[Store, str]) -> None:
    store, run_id = tree_store
    client = TestClient(create_app(store, allowed_hosts={"testserver"}))
    response = client.get(f"/api/runs/{run_id}/compare",
                          params={"nodes": "n3,4", "metric": ["loss", "val/top-1:acc"], "max_points": 4})  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert [n["id"] for n in body["nodes"]] == ["n3", "n4"]
    assert body["nodes"][1]["diff"] == {"clip": [1.0, 0.5]}
    assert body["nodes"][0]["info"] == {"score": 0.5}
    rows = {h["name"]: h for h in body["hyperparameters"]}
    assert rows["weight_decay"]["values"] == {"n3": 0.0001, "n4": 0.0}
    assert rows["betas"]["differs"] is False
    loss = body["metrics"]["loss"]["branches"]
    assert loss["n3"]["total"] == 24 and len(loss["n3"]["steps"]) <= 4
    assert body["metrics"]["val/top-1:acc"]["branches"]["n4"]["total"] == 0
    bad = client.get(f"/api/runs/{run_id}/compare", params={"nodes": "n3,n99"})
    assert bad.status_code == 404 and bad.json()["error"] == "node_not_found"
    bad = client.get(f"/api/runs/{run_id}/compare", params={"nodes": "n3,²"})
    assert bad.status_code == 404
    bad = client.get("/api/runs/nope/compare", params={"nodes": "n1"})
    assert bad.status_code == 404 and bad.json()["error"] == "run_not_found"
