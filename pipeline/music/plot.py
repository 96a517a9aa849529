"""matplotlib for pictures that diff well: one style, and PNGs saved without metadata, so the same data always gives
the same bytes and a picture's diff in a pull request means its data changed. matplotlib is imported only here."""

from __future__ import annotations

from pathlib import Path

from pipeline.atomic import atomic_path


def pyplot():  # noqa: ANN201 (matplotlib.pyplot, imported on first use)
    """matplotlib.pyplot on the Agg backend, with the project's style set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def save_png(fig, path: Path) -> str:  # noqa: ANN001
    """Write `fig` to `path` as a metadata-free PNG, atomically, and close it; return the file name for a link."""
    plt = pyplot()
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return Path(path).name
