"""The campaign's tiny real model: shared by the trainer subprocesses and the verifiers.

A small MLP on a fixed synthetic regression task (no download, no sklearn import, so a
trainer starts in about a second). ``build()`` returns the same architecture every time, so a
verifier can load any checkpoint's ``model`` and ``optimizer`` state into fresh objects.
"""

from __future__ import annotations

from typing import Any

import torch

torch.set_num_threads(1)  # several trainers share two cores: no thread oversubscription

INPUTS = 32
HIDDEN = 64


def build(lr: float = 0.05) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A fresh model and an SGD optimizer with momentum and weight decay (all tunable)."""
    model = torch.nn.Sequential(
        torch.nn.Linear(INPUTS, HIDDEN),
        torch.nn.Tanh(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.Tanh(),
        torch.nn.Linear(HIDDEN, 1),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def data(seed: int = 0, rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed regression problem: y = sin(x @ w) + noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, INPUTS, generator=gen)
    w = torch.randn(INPUTS, 1, generator=gen) / INPUTS**0.5
    y = torch.sin(x @ w) + 0.05 * torch.randn(rows, 1, generator=gen)
    return x, y


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> float:
    """One optimizer step on a minibatch; returns the loss."""
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return float(loss.item())


def load_into_fresh(state: Any) -> None:
    """Load a decoded checkpoint's model and optimizer state into fresh objects (raises if
    the shapes, keys or types do not fit)."""
    model, optimizer = build()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
