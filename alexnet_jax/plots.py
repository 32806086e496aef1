"""PNG figures: training curves, confusion matrix, per-class accuracy, prediction grid."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves_figure(records: list[dict]):
    """Cross-entropy and accuracy against epoch, train and validation, from metrics.jsonl records.

    Both loss curves are the plain cross-entropy against the true labels (the training objective
    may add label smoothing, which would shift the train curve up), so they can be compared.
    """
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot([r["epoch"] for r in train], [r["cross_entropy"] for r in train], label="train (augmented)")
    loss_ax.plot([r["epoch"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    acc_ax.plot([r["epoch"] for r in train], [r["accuracy"] for r in train], label="train (augmented)")
    acc_ax.plot([r["epoch"] for r in evals], [r["val_top1"] for r in evals], "o-", label="validation top-1")
    acc_ax.plot([r["epoch"] for r in evals], [r["val_top5"] for r in evals], "s--", label="validation top-5")
    for ax, name in ((loss_ax, "cross-entropy (true labels, no smoothing)"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_curves(records: list[dict], path: pathlib.Path) -> pathlib.Path:
    return _save(curves_figure(records), path)


def plot_confusion(confusion: np.ndarray, class_names, path: pathlib.Path) -> pathlib.Path:
    """Row-normalised confusion matrix (rows: true class) with counts in the cells."""
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(5, 0.6 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(
                j, i, int(count), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black"
            )
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_per_class(confusion: np.ndarray, class_names, path: pathlib.Path) -> pathlib.Path:
    accuracy = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(class_names)), 4))
    ax.bar(range(len(class_names)), accuracy)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.axhline(np.trace(confusion) / max(confusion.sum(), 1), color="k", ls="--", lw=1, label="overall")
    ax.legend()
    return _save(fig, path)


def plot_predictions(images, labels, predictions, class_names, path: pathlib.Path, columns: int = 8) -> pathlib.Path:
    """A grid of images labelled 'predicted / true', wrong predictions in red."""
    texts = [f"{class_names[p]}\n/ {class_names[t]}" for t, p in zip(labels, predictions, strict=True)]
    colours = ["green" if p == t else "red" for t, p in zip(labels, predictions, strict=True)]
    return plot_labelled_grid(images, texts, path, colours, columns)


def plot_labelled_grid(images, texts, path: pathlib.Path, colours=None, columns: int = 8) -> pathlib.Path:
    """A grid of equally sized images, each with up to two lines of text above it.

    The images are tiled into one mosaic drawn in a single axes (32 separate axes take seconds).
    """
    count, height, width = len(images), images.shape[1], images.shape[2]
    rows, gap = -(-count // columns), max(2, height // 8)
    cell_h, cell_w = height + 3 * gap, width + gap  # room for two lines of text above each image
    mosaic = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
    fig, ax = plt.subplots(figsize=(1.6 * columns, 1.8 * rows))
    for i, (image, text) in enumerate(zip(images, texts, strict=True)):
        top, left = (i // columns) * cell_h + 3 * gap, (i % columns) * cell_w
        mosaic[top : top + height, left : left + width] = image if image.shape[-1] == 3 else image[..., :1]
        colour = colours[i] if colours else "black"
        ax.text(left + width / 2, top - gap / 2, text, ha="center", va="bottom", fontsize=7, color=colour)
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    return _save(fig, path)
