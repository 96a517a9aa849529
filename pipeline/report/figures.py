"""The report's figures: bars, histograms, curves and feature panels, drawn with matplotlib and saved as PNG without
metadata (`plot.save_png`), so the same data always gives the same bytes and a figure's diff in a pull request means
the data changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.music.plot import pyplot, save_png

PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#e53e3e")


def bars(path: Path, labels: list[str], values: list[float], title: str, xlabel: str, reference: float | None = None,
         reference_label: str = "") -> str:  # fmt: skip
    """Horizontal bars, first label on top; an optional vertical reference line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(labels) + 1.2))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=PALETTE[0])
    ax.set_yticks(y, labels)
    if reference is not None:
        ax.axvline(reference, color=PALETTE[1], linestyle="--", label=reference_label)
        if reference_label:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        low = min(min(values), reference)
        ax.set_xlim(low - 0.25 * (max(max(values), reference) - low) - 1e-9, None)  # the differences, not the zero
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left")
    return save_png(fig, path)


def confusion(path: Path, counts: np.ndarray, labels: list[str], title: str) -> str:
    """A confusion matrix (rows: the truth, columns: what was named), each row shaded by its share, counts written."""
    plt = pyplot()
    size = 1.6 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(max(5.0, size + 1.5), size))
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("named")
    ax.set_ylabel("composer")
    ax.set_title(title, loc="left", fontsize=9)
    return save_png(fig, path)


def histograms(path: Path, series: dict[str, np.ndarray], bins: np.ndarray, title: str, xlabel: str,
               log_x: bool = False) -> str:  # fmt: skip
    """One or more distributions over the same bins, each normalised to a density, drawn as steps."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    for (label, values), color in zip(series.items(), PALETTE, strict=False):
        density, edges = np.histogram(np.asarray(values, float), bins=bins, density=True)
        ax.stairs(density, edges, label=f"{label} ({len(values):,})", color=color, linewidth=1.5)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, loc="left")
    ax.legend(frameon=False)
    return save_png(fig, path)


def curves(path: Path, series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str, ylabel: str,
           hlines: dict[str, float] | None = None) -> str:  # fmt: skip
    """Lines y(x), one per series, with optional labelled horizontal reference lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for (label, (x, y)), color in zip(series.items(), PALETTE, strict=False):
        ax.plot(x, y, label=label, color=color, linewidth=1.4)
    for (label, value), color in zip((hlines or {}).items(), PALETTE[2:], strict=False):
        ax.axhline(value, color=color, linestyle="--", linewidth=1, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    ax.legend(frameon=False)
    ax.grid(color="#eeeeee")
    return save_png(fig, path)


def feature_grid(path: Path, sets: dict[str, list[dict[str, np.ndarray]]], names: tuple[str, ...], title: str) -> str:
    """One panel per feature: the mean pitch-class histogram of each set, or each set's distribution of a scalar."""
    plt = pyplot()
    columns = 4
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(12, 2.6 * rows))
    for ax, name in zip(axes.ravel(), names, strict=False):
        size = 12 if name == "pitch_class_histogram" else 1
        values = {label: np.array([p[name] for p in pieces], float).reshape(-1, size) for label, pieces in sets.items()}
        if name == "pitch_class_histogram":
            for k, ((label, v), color) in enumerate(zip(values.items(), PALETTE, strict=False)):
                width = 0.8 / len(values)
                if not np.isfinite(v).any():
                    continue
                ax.bar(np.arange(12) + (k - (len(values) - 1) / 2) * width, np.nanmean(v, axis=0), width,
                       color=color, label=label)  # fmt: skip
            ax.set_xticks(range(12), ["C", "", "D", "", "E", "F", "", "G", "", "A", "", "B"])
        else:
            finite = {label: v[np.isfinite(v)].ravel() for label, v in values.items()}
            together = np.concatenate([v for v in finite.values() if len(v)] or [np.zeros(0)])
            if len(together) == 0:  # no piece defines this feature: an empty panel, not an error
                ax.set_title(name.replace("_", " "), fontsize=9)
                continue
            bins = np.linspace(together.min(), together.max(), 25) if np.ptp(together) > 0 else 10
            for (label, v), color in zip(finite.items(), PALETTE, strict=False):
                if len(v):
                    ax.hist(v, bins=bins, density=True, histtype="step", linewidth=1.4, color=color, label=label)
        ax.set_title(name.replace("_", " "), fontsize=9)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    if axes.ravel()[0].get_legend_handles_labels()[0]:
        axes.ravel()[0].legend(frameon=False, fontsize=8)
    fig.suptitle(title, x=0.01, ha="left")
    return save_png(fig, path)
