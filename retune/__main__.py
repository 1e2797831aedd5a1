"""``python -m retune`` is the ``retune`` command."""

from __future__ import annotations

import sys

from retune.cli import main

sys.exit(main())
