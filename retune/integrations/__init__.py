"""Framework adapters. Each module imports its framework lazily; ``import retune`` imports none.

* :mod:`retune.integrations.pytorch` — what ``retune.init`` records of a plain PyTorch model,
  optimizer and scheduler.
"""
