"""A real (tiny) training loop for end-to-end tests, run as a subprocess.

usage: python trainer.py STORE NAME STEPS STEP_DELAY [POLL_INTERVAL]
Prints the optimizer's final param-group values as JSON on its last line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch

import retune


def main() -> None:
    store, name, steps, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    poll = float(sys.argv[5]) if len(sys.argv) > 5 else 0.02
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    groups: list[dict[str, Any]] = [
        {"params": model[0].parameters(), "name": "body"},
        {"params": model[2].parameters(), "lr": 0.05},
    ]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    run = retune.init(name, model=model, optimizer=optimizer, store=store, poll_interval=poll)

    def refuse(value: float) -> None:
        raise ValueError(f"refusing to set fragile to {value}")

    run.tunable("fragile", get=lambda: 1.0, set=refuse, bounds=(0, 10))
    clip = run.tunable("clip_norm", 1.0, bounds=(0, None))
    with run:
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip.value)
            optimizer.step()
            run.step(loss=loss.item(), lr=optimizer.param_groups[0]["lr"], clip=clip.value)
            time.sleep(delay)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    print(json.dumps(groups))


if __name__ == "__main__":
    main()
