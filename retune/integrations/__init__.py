"""Framework adapters. Each module imports its framework lazily; ``import retune`` imports none.

* :mod:`retune.integrations.pytorch` — what ``retune.init`` records of a plain PyTorch model,
  optimizer and scheduler.
* :mod:`retune.integrations.lightning` — ``RetuneCallback`` for ``lightning.Trainer``.
* :mod:`retune.integrations.transformers` — ``RetuneCallback`` for Hugging Face ``Trainer``.
* :mod:`retune.integrations.keras` — ``RetuneCallback`` for Keras 3 ``model.fit`` (torch backend).

Every callback adapts only the edges (where the step boundary is, how the framework's state is
captured with ``run.add_state``, how its loop position is expressed); commands, validation,
the audit, nodes and checkpoints are the session's one shared core. See docs/integrations.md.
"""
