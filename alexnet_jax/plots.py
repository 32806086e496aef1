"""PNG figures: training curves, confusion matrix, per-class accuracy, prediction grid, the first
layer's filters."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from alexnet_jax import files, report


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    """Writes the figure as a PNG, whole or not at all, and frees it."""
    fig.tight_layout()
    with files.replacing(path) as temporary:
        fig.savefig(temporary, dpi=120, format="png")
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


# Up to this many classes a figure names every class; above it (ImageNet's 1,000), the confusion and
# per-class figures summarise at a fixed size instead, so memory and pixels do not grow with classes.
NAMED_CLASSES = 30
SUMMARY_ROWS = 15  # the worst and the best classes, and 2x this many most-confused pairs
HEAT_MAP_BLOCKS = 200  # cells a side of the many-class heat map
THUMBNAIL = 160  # pixels: the largest side of an image in a grid


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """``image`` (uint8 HWC) shrunk to at most ``THUMBNAIL`` pixels a side (antialiased), or as it is."""
    height, width = image.shape[:2]
    scale = THUMBNAIL / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).resize(size, Image.BOX)
    return np.asarray(resized).reshape(size[1], size[0], -1)


def plot_confusion(confusion: np.ndarray, class_names, path: pathlib.Path) -> pathlib.Path:
    """Row-normalised confusion matrix (rows: true class): named cells with their counts, or, for
    more than ``NAMED_CLASSES`` classes, an unlabelled heat map beside the most-confused pairs."""
    if len(class_names) > NAMED_CLASSES:
        return _save(_confusion_summary(confusion, class_names), path)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(5, 0.6 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, int(count), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def _blocks(confusion: np.ndarray, most: int) -> tuple[np.ndarray, int]:
    """The confusion matrix summed over blocks of consecutive classes, at most ``most`` blocks a
    side; returns (block sums, classes per block)."""
    size = -(-len(confusion) // most)
    padded = np.pad(confusion, (0, -len(confusion) % size))
    count = len(padded) // size
    return padded.reshape(count, size, count, size).sum((1, 3)), size


def _confusion_summary(confusion: np.ndarray, class_names):
    """Many classes: the matrix summed over blocks of neighbouring classes (related classes sit
    together in ImageNet's order, so confusions among them show as squares on the diagonal) as an
    unlabelled heat map, and the most-confused pairs named."""
    blocks, size = _blocks(confusion, HEAT_MAP_BLOCKS)
    block_rates = blocks / np.maximum(blocks.sum(1, keepdims=True), 1)
    fig, (heat, bars) = plt.subplots(1, 2, figsize=(15, 7), width_ratios=(1, 1))
    extent = (0, len(blocks) * size, len(blocks) * size, 0)
    norm = matplotlib.colors.PowerNorm(0.5, 0, 1)  # square-root scale: rare confusions show
    image = heat.imshow(block_rates, cmap="Blues", norm=norm, interpolation="nearest", extent=extent)
    heat.set_xlabel("predicted class (index)")
    heat.set_ylabel("true class (index)")
    heat.set_title(f"{len(class_names)} classes in blocks of {size}, rows normalised")
    fig.colorbar(image, ax=heat, fraction=0.046)
    pairs = report.most_confused(confusion, 2 * SUMMARY_ROWS)
    totals = confusion.sum(1)
    labels = [f"{_short(class_names[t])} -> {_short(class_names[p])}" for t, p, _ in pairs]
    bars.barh(np.arange(len(pairs)), [n / max(totals[t], 1) for t, _, n in pairs], color="tab:red")
    bars.set_yticks(np.arange(len(pairs)), labels, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("fraction of the true class's examples")
    bars.set_title("most confused: true -> predicted")
    return fig


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def plot_per_class(confusion: np.ndarray, class_names, path: pathlib.Path) -> pathlib.Path:
    """Accuracy per class: a bar per class, or, for more than ``NAMED_CLASSES`` classes, every class
    ranked beside the worst and the best ones named."""
    accuracy = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    overall = np.trace(confusion) / max(confusion.sum(), 1)
    if len(class_names) > NAMED_CLASSES:
        return _save(_per_class_summary(accuracy, overall, class_names), path)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(class_names)), 4))
    ax.bar(range(len(class_names)), accuracy)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.axhline(overall, color="k", ls="--", lw=1, label="overall")
    ax.legend()
    return _save(fig, path)


def _per_class_summary(accuracy: np.ndarray, overall: float, class_names):
    order = np.argsort(accuracy, kind="stable")
    fig, (ranked, named) = plt.subplots(1, 2, figsize=(14, 6), width_ratios=(1, 1))
    ranked.plot(np.arange(len(order)), accuracy[order], lw=1.5)
    ranked.axhline(overall, color="k", ls="--", lw=1, label=f"overall {overall:.1%}")
    ranked.set_xlabel(f"class, ranked by accuracy ({len(order)} classes)")
    ranked.set_ylabel("accuracy")
    ranked.set_ylim(0, 1)
    ranked.legend()
    shown = np.concatenate([order[:SUMMARY_ROWS], order[-SUMMARY_ROWS:][::-1]])
    colours = ["tab:red"] * SUMMARY_ROWS + ["tab:green"] * SUMMARY_ROWS
    named.barh(np.arange(len(shown)), accuracy[shown], color=colours)
    named.set_yticks(np.arange(len(shown)), [_short(class_names[i]) for i in shown], fontsize=7)
    named.invert_yaxis()
    named.set_xlim(0, 1)
    named.set_xlabel("accuracy")
    named.set_title(f"the {SUMMARY_ROWS} worst (red) and best (green) classes")
    return fig


def plot_predictions(images, labels, predictions, class_names, path: pathlib.Path, columns: int = 8) -> pathlib.Path:
    """A grid of images labelled 'predicted / true', wrong predictions in red."""
    pairs = zip(labels, predictions, strict=True)
    texts = [f"{_short(class_names[p], 18)}\n/ {_short(class_names[t], 18)}" for t, p in pairs]
    colours = ["green" if p == t else "red" for t, p in zip(labels, predictions, strict=True)]
    return plot_labelled_grid(images, texts, path, colours, columns)


def plot_labelled_grid(images, texts, path: pathlib.Path, colours=None, columns: int = 8) -> pathlib.Path:
    """A grid of equally sized images, each with up to two lines of text above it.

    The images are tiled into one mosaic drawn in a single axes (32 separate axes take seconds),
    each shrunk to at most ``THUMBNAIL`` pixels a side first: about what the figure shows of it,
    and what keeps the memory of drawing the mosaic small whatever the images' size.
    """
    images = [_thumbnail(np.asarray(image)) for image in images]
    count, (height, width) = len(images), images[0].shape[:2]
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


FILTER_SCALE = 6  # screen pixels per kernel pixel in the filter figure
TOWER_GAP = 3  # kernel pixels between the towers' filters


def filter_grid(kernel: np.ndarray, towers: int = 1, columns: int = 16) -> np.ndarray:
    """The filters of ``kernel`` (height x width x 3 x filters) as one RGB uint8 image: each filter
    stretched to the full range on its own (as the paper's Figure 3 shows them), ``columns`` a row,
    one pixel apart; with ``towers`` > 1 the filters are split in that many equal groups (the
    paper's two GPUs), each starting on a new row, ``TOWER_GAP`` pixels below the one before."""
    height, width, _, count = kernel.shape
    low, high = kernel.min(axis=(0, 1, 2)), kernel.max(axis=(0, 1, 2))
    scaled = (kernel - low) / np.where(high > low, high - low, 1.0)
    per_tower = count // towers
    tower_height = -(-per_tower // columns) * (height + 1)
    grid = np.full((towers * tower_height + (towers - 1) * TOWER_GAP + 1, columns * (width + 1) + 1, 3), 255, np.uint8)
    for index in range(count):
        tower, within = divmod(index, per_tower)
        top = 1 + tower * (tower_height + TOWER_GAP) + (within // columns) * (height + 1)
        left = 1 + (within % columns) * (width + 1)
        grid[top : top + height, left : left + width] = np.round(255 * scaled[..., index]).astype(np.uint8)
    return grid


def plot_first_layer(kernel, path: pathlib.Path, towers: int = 1) -> pathlib.Path:
    """The first convolution's filters (``models.first_layer_kernel``, whole) as a PNG
    (``filter_grid``), written whole or not at all."""
    grid = filter_grid(np.asarray(kernel, np.float32), towers)
    image = Image.fromarray(grid).resize((grid.shape[1] * FILTER_SCALE, grid.shape[0] * FILTER_SCALE), Image.NEAREST)
    with files.replacing(path) as temporary:
        image.save(temporary, format="PNG")
    return path
