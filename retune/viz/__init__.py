"""Pictures of runs, in pure Python: the tuning tree as SVG, metric charts, the one-file report.

``import retune`` does not import this package; :func:`retune.plot_tree` imports it when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from retune.viz._layout import Chain, Edge, NodeBox, TreeLayout, layout_tree
from retune.viz._tree import TreePicture, default_metric, tree_picture, tree_svg, tree_svg_of

if TYPE_CHECKING:
    from retune.session._snapshot import RunSnapshot
    from retune.store import Store

__all__ = [
    "Chain",
    "Edge",
    "NodeBox",
    "TreeFigure",
    "TreeLayout",
    "TreePicture",
    "default_metric",
    "layout_tree",
    "plot_tree",
    "snapshot_of",
    "tree_picture",
    "tree_svg",
    "tree_svg_of",
]


class TreeFigure:
    """The tree picture of a run, as a notebook shows it (``_repr_svg_`` / ``_repr_html_``).

    ``repr()`` is one line; :attr:`svg` is the SVG text; :meth:`save` writes it to a file.
    """

    def __init__(self, picture: TreePicture, name: str, run_id: str) -> None:
        self.picture = picture
        self.name = name
        self.run_id = run_id

    @property
    def svg(self) -> str:
        return self.picture.svg

    def __repr__(self) -> str:
        layout = self.picture.layout
        return (f"<TreeFigure {self.name} ({self.run_id}): {len(layout.nodes)} nodes, "
                f"{layout.lanes} lanes>")  # fmt: skip

    def _repr_svg_(self) -> str:
        return self.picture.svg

    def _repr_html_(self) -> str:
        return f'<div class="retune-tree-figure" style="overflow:auto">{self.picture.svg}</div>'

    def save(self, path: str | Path) -> Path:
        """Write the SVG to ``path`` (UTF-8); returns the path."""
        target = Path(path)
        target.write_text(self.picture.svg, encoding="utf-8")
        return target


def snapshot_of(run: Any, store: str | Store | None = None) -> RunSnapshot:
    """A fresh snapshot of ``run``: a :class:`~retune.RunSnapshot` as it is, or a live
    :class:`~retune.Run` / :class:`~retune.Controller` (anything with ``store`` and ``id``)
    read again from its store, or a run id or name read from ``store`` (a URL or a
    :class:`~retune.store.Store`; default ``$RETUNE_STORE`` or ``./.retune/retune.db``)."""
    from retune.session._snapshot import RunSnapshot, read_snapshot
    from retune.store import Store, open_store

    if isinstance(run, RunSnapshot):
        return run
    if isinstance(run, str):
        if isinstance(store, Store):
            return read_snapshot(store, run)
        with open_store(store, create=False) as opened:
            return read_snapshot(opened, run)
    own_store = getattr(run, "store", None)
    run_id = getattr(run, "id", None)
    if run_id is None and getattr(run, "run", None) is not None:  # a Controller
        run_id = run.run.id
    if isinstance(own_store, Store) and isinstance(run_id, str):
        return read_snapshot(own_store, run_id)
    from retune.errors import InvalidArgument

    raise InvalidArgument(
        f"plot_tree takes a run id or name, a Run, a Controller or a RunSnapshot, "
        f"not {type(run).__name__}"
    )


def plot_tree(run: Any, store: str | Store | None = None, **options: Any) -> TreeFigure:
    """The tree picture of ``run`` (see :func:`snapshot_of` for what ``run`` may be);
    ``options`` are :func:`tree_picture`'s (``color_by``, ``goal``, ``width``,
    ``collapse_chains``). Displayed inline by Jupyter."""
    snapshot = snapshot_of(run, store)
    return TreeFigure(tree_picture(snapshot, **options), snapshot.name, snapshot.id)
