"""What ``retune.init`` records about the process without being asked."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from retune.errors import redact
from retune.store import current_user

__all__ = ["environment", "git_info", "invocation", "seed_everything"]

KEY_PACKAGES = (
    "retune",
    "torch",
    "numpy",
    "scikit-learn",
    "lightning",
    "pytorch-lightning",
    "transformers",
    "accelerate",
    "keras",
    "tensorflow",
    "jax",
    "sqlalchemy",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Python, platform, key package versions, and (if torch is already imported) devices."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": {name: v for name in KEY_PACKAGES if (v := _version(name)) is not None},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = torch.cuda.is_available()
        env["torch"] = {
            "version": torch.__version__,
            "cuda_available": cuda,
            "cuda_version": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda
            else [],
            "num_threads": torch.get_num_threads(),
        }
    return env


def invocation() -> dict[str, Any]:
    """Command line (store passwords redacted), working directory, host, OS user and pid."""
    return {
        "argv": [redact(arg) for arg in sys.argv],
        "executable": sys.executable,
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "user": current_user(),
        "pid": os.getpid(),
    }


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_info(script: str | None = None) -> dict[str, Any] | None:
    """Commit, branch and dirty flag of the repository holding ``script`` (default: argv[0]).

    ``None`` when the script is not in a git repository or git is not installed.
    """
    target = script if script is not None else (sys.argv[0] if sys.argv and sys.argv[0] else "")
    folder = Path(target).resolve().parent if target and Path(target).exists() else Path.cwd()
    root = _git(["rev-parse", "--show-toplevel"], folder)
    if root is None:
        return None
    commit = _git(["rev-parse", "HEAD"], folder)
    status = _git(["status", "--porcelain", "--untracked-files=no"], folder)
    return {
        "root": root,
        "commit": commit,
        "branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], folder),
        "dirty": bool(status),
    }


def seed_everything(seed: int | None) -> dict[str, Any]:
    """Seed python, numpy and torch (when imported) with ``seed``; report the seeds in force.

    Without a seed nothing is changed; torch's own initial seed is still recorded, since it is
    what a user needs to reproduce an unseeded run.
    """
    import random

    import numpy as np

    torch = sys.modules.get("torch")
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        if torch is not None:
            torch.manual_seed(seed)
    seeds: dict[str, Any] = {"seed": seed}
    if torch is not None:
        seeds["torch_initial_seed"] = int(torch.initial_seed())
    return seeds
