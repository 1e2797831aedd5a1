"""``retune demo``: a small CNN on scikit-learn's bundled digits, with Retune attached.

Nothing is downloaded: the 1,797 8x8 digit images ship with scikit-learn. Two CPU cores train
it to ~98% test accuracy in well under a minute.
"""

from __future__ import annotations

import math
import os
import sys
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
    from retune._format import draw_tree
    from retune.session import load

    snapshot = load(run_id, store=store)
    print(f"the tuning tree of {snapshot.name} ({snapshot.id}):")
    for line in draw_tree(snapshot.tree()):
        print("  " + line)


class _Progress:
    """A tqdm bar on a terminal; one plain line per epoch when stdout is a file or a pipe
    (a log gets no carriage-return updates)."""

    def __init__(self, total: int, epochs: int) -> None:
        self.tty = sys.stdout.isatty()
        self.epochs = epochs
        self.bar: Any = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def step(self, loss: float, lr: float, val_acc: float) -> None:
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", val_acc=f"{val_acc:.3f}")

    def epoch(self, epoch: int, step: int, loss: float, lr: float, val_acc: float) -> None:
        if self.bar is None:
            print(f"epoch {epoch + 1}/{self.epochs}  step {step}  loss {loss:.4f}  lr {lr:.2e}  "
                  f"val_acc {val_acc:.4f}", flush=True)  # fmt: skip

    def say(self, text: str) -> None:
        """A line that does not tear the bar."""
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_demo(
    *,
    epochs: int = 30,
    name: str = "digits-cnn",
    seed: int = 0,
    store: str | None = None,
    step_delay: float = 0.0,
    batch_size: int = 64,
    lr: float = 2e-3,
    scripted: bool = False,
    ui_port: int | None = None,
    keep_serving: bool = False,
    resume: str | None = None,
) -> int:
    """Train, print the test accuracy, the tree and how to look at the run (once, also when
    ``scripted`` continues in a second process); 0 if accuracy > 95%.

    ``ui_port`` serves the dashboard while training (and, with ``keep_serving``, afterwards
    until Ctrl-C). ``scripted`` plays a short tuning session by itself: a ``set`` during
    the first third, a ``restore`` of the root with another weight decay, and, when training
    ends, a ``resume`` in a new process that trains two more epochs. The script stops, and
    says so, as soon as the audit shows a command it did not send: someone else is steering.
    """
    import torch
    from torch.nn import functional
    from torch.utils.data import DataLoader, TensorDataset

    import retune

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # eta_min > 0: lr stays a valid value (> 0) in every checkpoint, the last one included
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * len(loader), eta_min=lr / 100
    )
    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "data": "sklearn digits"}
    run = retune.init(
        name,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        seed=seed,
        store=store,
        resume=resume,
        checkpoint_every_n_epochs=1,
        keep_last=100,  # small model: keep every epoch so any point can be restored
    )
    clip = run.tunable("clip_norm", 5.0, bounds=(0.0, None), doc="gradient clipping norm")
    run.tune_dropout(model)
    server = _serve(run, ui_port) if ui_port is not None else None
    progress = _Progress(epochs * len(loader), epochs)
    director = None
    if scripted and not resume:
        director = _Director(run, store, epochs * len(loader), progress.say)
    if resume:
        print(f"retune: continuing run {run.name} ({run.id}) at step {run.global_step}")
    else:
        print(f"retune: recording run {run.name} ({run.id}); change it live from another "
              "terminal:")  # fmt: skip
        print(f"  retune set {run.name} lr=1e-3    retune get {run.name}    "
              f"retune pause {run.name}")  # fmt: skip
        print(f"  retune restore {run.name} n1@200 weight_decay=1e-3    retune tree {run.name}")
    val_acc, last_loss, lr_now = 0.0, math.nan, lr
    with run:
        for epoch in run.epochs(epochs):
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
                if director is not None:
                    director.after_step(run.global_step)
                last_loss = loss.item()
                progress.step(last_loss, lr_now, val_acc)
                if step_delay:
                    time.sleep(step_delay)
            val_loss, val_acc = _evaluate(model, x_test, y_test)
            run.log(val_loss=val_loss, val_acc=val_acc)
            progress.epoch(epoch, run.global_step, last_loss, lr_now, val_acc)
        progress.close()
    test_loss, test_acc = _evaluate(model, x_test, y_test)
    print(f"test accuracy {test_acc:.4f} (loss {test_loss:.4f}) on {len(y_test)} held-out digits")
    if director is not None and director.resume_in_new_process(epochs + 2, step_delay):
        pass  # the new process printed the tree and the hints, once, as they are now
    else:
        _print_tree(run.id, store)
        print("look at the run:")
        print("  retune runs")
        print(f"  retune show {name}")
        print(f"  retune metrics {name} val_acc --branch n1")
        print(f"  retune changes {name}")
        print(f"  retune tree {name}")
    code = 0
    if test_acc <= 0.95:
        print("retune: warning: test accuracy is not above 95%")
        code = 1
    if server is not None and keep_serving:
        print("retune: the dashboard keeps serving; Ctrl-C to quit", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return code


def _serve(run: Any, port: int) -> Any:
    from retune.errors import InvalidArgument
    from retune.server import serve_in_thread
    from retune.store import open_store

    for candidate in range(port, port + 20):  # the next free port if 8765 is taken
        try:
            server, url = serve_in_thread(open_store(run.store.url), port=candidate)
        except InvalidArgument:
            continue
        print(f"retune: dashboard at {url}runs/{run.id}", flush=True)
        return server
    print("retune: no free port for the dashboard; `retune ui` can serve it later")
    return None


class _Director:
    """Plays a tuning session from "another process": commands go through the store.

    It steps aside for people: as soon as the run's audit holds a command it did not send
    (someone ran ``retune set``, ``pause``, ``stop``... or used the dashboard), it says so once
    and sends nothing more, and does not resume the run in a new process.
    """

    CHECK_EVERY = 10  # steps between two looks at the audit (each is one small query)

    def __init__(self, run: Any, store: str | None, total_steps: int, say: Any) -> None:
        import retune

        self.name, self.run_id, self.store, self.say = run.name, run.id, store, say
        self.ctl = retune.connect(run.id, store=store, source="python")
        self.set_at, self.restore_at = total_steps // 3, total_steps // 2
        self.done: set[str] = set()
        self.sent: set[int] = set()
        self.stepped_aside = False

    def _someone_else(self) -> bool:
        if not self.stepped_aside:
            others = [c for c in self.ctl.history() if c.id not in self.sent]
            if others:
                self.stepped_aside = True
                self.say(
                    f"retune demo: someone else is steering ({others[0].kind} from "
                    f"{others[0].user or '?'}); the script stops here"
                )
        return self.stepped_aside

    def after_step(self, step: int) -> None:
        if self.stepped_aside:
            return
        due_set = step >= self.set_at and "set" not in self.done
        due_restore = step >= self.restore_at and "restore" not in self.done
        if (due_set or due_restore or step % self.CHECK_EVERY == 0) and self._someone_else():
            return
        if due_set:
            self.done.add("set")
            self.sent.add(self.ctl.set(lr=5e-4).id)
            self.say(f"retune demo: set lr=5e-4 at step {step}")
        elif due_restore:
            self.done.add("restore")
            self.sent.add(self.ctl.restore("n1", set={"weight_decay": 1e-3}).id)
            self.say(f"retune demo: restore n1 with weight_decay=1e-3 at step {step}")

    def resume_in_new_process(self, epochs: int, step_delay: float) -> bool:
        """Continue the run in a new process for two more epochs; True when that process
        trained and printed the tree, False when someone else steered the run (nothing done)
        or the new process failed."""
        import subprocess

        if self._someone_else():
            return False
        print(f"retune demo: resuming {self.name} in a new process for two more epochs", flush=True)
        command = [sys.executable, "-m", "retune", "demo", "--resume", "latest", "--no-ui",
                   "--exit", "--epochs", str(epochs), "--step-delay", str(step_delay),
                   "--name", self.name]  # fmt: skip
        if self.store:
            command += ["--store", self.store]
        done = subprocess.run(command, check=False)
        return done.returncode in (0, 1)  # 1: it trained, below the accuracy bar
