"""``retune demo``: a small CNN on scikit-learn's bundled digits, with Retune attached.

Nothing is downloaded: the 1,797 8x8 digit images ship with scikit-learn. Two CPU cores train
it to ~98% test accuracy in well under a minute.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["build_model", "load_digits_tensors", "run_demo"]


def load_digits_tensors(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """(x_train, y_train, x_test, y_test): images scaled to [0, 1], shape (N, 1, 8, 8)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype("float32") / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=seed
    )
    return (
        torch.from_numpy(x_train).unsqueeze(1),
        torch.from_numpy(y_train).long(),
        torch.from_numpy(x_test).unsqueeze(1),
        torch.from_numpy(y_test).long(),
    )


def build_model() -> Any:
    """Two 3x3 convolutions, max pooling, dropout, two linear layers (~40k parameters)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(64, 10),
    )


def _evaluate(model: Any, x: Any, y: Any) -> tuple[float, float]:
    import torch
    from torch.nn import functional

    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    model.train()
    return loss, acc


def _print_tree(run_id: str, store: str | None) -> None:
    from retune._cli_checkpoints import draw_tree
    from retune.session import load

    snapshot = load(run_id, store=store)
    print(f"the tuning tree of {snapshot.name} ({snapshot.id}):")
    for line in draw_tree(snapshot.tree()):
        print("  " + line)


def run_demo(
    *,
    epochs: int = 30,
    name: str = "digits-cnn",
    seed: int = 0,
    store: str | None = None,
    step_delay: float = 0.0,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> int:
    """Train, print the test accuracy and how to look at the run; 0 if accuracy > 95%."""
    import torch
    from torch.nn import functional
    from torch.utils.data import DataLoader, TensorDataset
    from tqdm import tqdm

    import retune

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "data": "sklearn digits"}
    run = retune.init(
        name,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        seed=seed,
        store=store,
        checkpoint_every_n_epochs=1,
        keep_last=100,  # small model: keep every epoch so any point can be restored
    )
    clip = run.tunable("clip_norm", 5.0, bounds=(0.0, None), doc="gradient clipping norm")
    run.tune_dropout(model)
    print(f"retune: recording run {run.name} ({run.id}); change it live from another terminal:")
    print(f"  retune set {run.name} lr=1e-3    retune get {run.name}    retune pause {run.name}")
    print(f"  retune restore {run.name} n1@200 weight_decay=1e-3    retune tree {run.name}")
    bar = tqdm(total=epochs * len(loader), unit="step", dynamic_ncols=True)
    val_acc = 0.0
    with run:
        for _epoch in run.epochs(epochs):
            for x, y in run.batches(loader):
                logits = model(x)
                loss = functional.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip.value)
                optimizer.step()
                scheduler.step()
                acc = (logits.argmax(1) == y).float().mean().item()
                lr_now = optimizer.param_groups[0]["lr"]
                run.step(loss=loss.item(), acc=acc, lr=lr_now)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_now:.2e}",
                                val_acc=f"{val_acc:.3f}")  # fmt: skip
                if step_delay:
                    time.sleep(step_delay)
            val_loss, val_acc = _evaluate(model, x_test, y_test)
            run.log(val_loss=val_loss, val_acc=val_acc)
        bar.close()
    test_loss, test_acc = _evaluate(model, x_test, y_test)
    print(f"test accuracy {test_acc:.4f} (loss {test_loss:.4f}) on {len(y_test)} held-out digits")
    _print_tree(run.id, store)
    print("look at the run:")
    print("  retune runs")
    print(f"  retune show {name}")
    print(f"  retune metrics {name} val_acc")
    print(f"  retune changes {name}")
    print(f"  retune tree {name}")
    if test_acc <= 0.95:
        print("retune: warning: test accuracy is not above 95%")
        return 1
    return 0
