"""Figures a trial writes next to its metrics: mask pipeline, latent traversals, reconstructions.

Numbers alone do not tell whether a mask isolates the object or a latent means anything; one
look at these PNGs does. Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas
directly, never through ``pyplot`` (so importing this module does not switch a notebook's
global backend either): nothing is registered in pyplot's global figure list, so
figures cannot leak across thousands of trials in a search and this works in Ray workers with
no display. Every function saves a PNG (creating the folder) and returns its path.

Layout is a fixed grid of ``CELL`` inch panels plus fixed margins (``figure_size``), saved
without ``bbox_inches="tight"``, so a figure's pixel size is predictable from its rows and
columns. Images with 1 channel are drawn in gray, with 3 in RGB. Model outputs with extra
channels (a child that also reconstructs its mask: 2 = gray + mask, 4 = RGB + mask, 6 = RGB +
RGB mask) are drawn from their image channels only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from compvae.masks import MaskSteps, eval_mode, module_device

__all__ = [
    "CELL",
    "DPI",
    "figure_size",
    "image_channels_for",
    "mask_pipeline_figure",
    "reconstruction_figure",
    "traversal_figure",
]

CELL = 1.25  #: inches per image panel
DPI = 100
LEFT = 0.9  #: inches for row labels
TOP = 0.75  #: inches for the title and column titles
RIGHT = 0.1
BOTTOM = 0.1
OVERLAY_RGB = (1.0, 0.15, 0.1)  #: mask overlay colour (red reads on gray and on most RGB)
OVERLAY_ALPHA = 0.55


def figure_size(rows: int, cols: int) -> tuple[float, float]:
    """``(width, height)`` in inches of a ``rows x cols`` panel grid with this module's margins."""
    return LEFT + cols * CELL + RIGHT, TOP + rows * CELL + BOTTOM


def image_channels_for(channels: int) -> int:
    """How many leading channels of a ``channels``-channel tensor are the image (1 or 3).

    1 or 2 channels -> gray (2 = gray image + mask); 3 or more -> RGB (4 = RGB + mask,
    6 = RGB + 3-channel mask as in the original child).
    """
    if channels < 1:
        raise ValueError(f"need at least one channel, got {channels}")
    return 1 if channels < 3 else 3


def _np(x: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """Float32 numpy copy; uint8 (how the trainer stores images and masks) is scaled to [0, 1]."""
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return a.astype(np.float32)


class Sheet:
    """A figure whose panels are painted into one RGBA pixel canvas, drawn as a single image.

    Why not one Axes per panel: a Matplotlib Axes costs ~25 ms to build and draw (ticks, spines,
    its own transforms) and every image in it is resampled on its own; a trial's figures have
    ~200 panels, which took 6 s of a quick trial, more than its final evaluation. Here each
    panel's pixels are upsampled (nearest, as ``imshow(interpolation="nearest")`` does) into
    its cell of a canvas at the figure's pixel size, and one Axes covering the figure, with
    data coordinates in inches (y down), draws that canvas, the frames, the contours, the
    titles and the labels where panel Axes had them: the PNG has the same size and layout.
    """

    def __init__(self, rows: int, cols: int) -> None:
        w, h = figure_size(rows, cols)
        self.fig = Figure(figsize=(w, h), dpi=DPI)
        FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_axes((0.0, 0.0, 1.0, 1.0))
        self.ax.set_xlim(0, w)
        self.ax.set_ylim(h, 0)
        self.ax.set_axis_off()
        self.size = (w, h)
        self.canvas = np.zeros((round(h * DPI), round(w * DPI), 4), dtype=np.float32)

    def suptitle(self, text: str, fontsize: float = 9) -> None:
        self.fig.suptitle(text, fontsize=fontsize)

    def paint(self, x0: float, y0: float, side: float, rgba: np.ndarray) -> None:
        """Alpha-composite ``rgba`` (H, W, 4) over the canvas at the square cell (inches)."""
        c0, r0 = round(x0 * DPI), round(y0 * DPI)
        c1, r1 = round((x0 + side) * DPI), round((y0 + side) * DPI)
        h, w = rgba.shape[:2]
        rows = np.minimum(((np.arange(r1 - r0) + 0.5) * h / (r1 - r0)).astype(np.int64), h - 1)
        cols = np.minimum(((np.arange(c1 - c0) + 0.5) * w / (c1 - c0)).astype(np.int64), w - 1)
        src = rgba[rows][:, cols]
        dst = self.canvas[r0:r1, c0:c1]
        a = src[..., 3:4]
        dst[..., :3] = src[..., :3] * a + dst[..., :3] * (1.0 - a)
        dst[..., 3:4] = a + dst[..., 3:4] * (1.0 - a)

    def save(self, path: str | Path) -> Path:
        w, h = self.size
        self.ax.imshow(self.canvas, extent=(0, w, h, 0), interpolation="nearest", aspect="auto", zorder=0)
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        # zlib level 1: a third of the default level's encoding time for a slightly larger file
        self.fig.savefig(p, dpi=DPI, format="png", pil_kwargs={"compress_level": 1})
        self.fig.clear()
        return p


class Panel:
    """One cell of a :class:`Sheet`, with the few Axes methods the figures use."""

    def __init__(self, sheet: Sheet, x0: float, y0: float, side: float) -> None:
        self.sheet, self.x0, self.y0, self.side = sheet, x0, y0, side

    def imshow(self, img: np.ndarray, cmap: str | None = None, vmin: float = 0.0, vmax: float = 1.0,
               **_: object) -> None:
        """A (H, W) map through ``cmap`` over ``[vmin, vmax]``, or (H, W, 3) RGB / (H, W, 4) RGBA
        in [0, 1], filling the panel (``extent=(0, 1, 1, 0)``, nearest neighbour)."""
        a = np.asarray(img, dtype=np.float32)
        if a.ndim == 2:
            span = vmax - vmin
            norm = np.clip((a - vmin) / span, 0.0, 1.0) if span > 0 else np.zeros_like(a)
            rgba = np.asarray(colormaps[cmap or "viridis"](norm), dtype=np.float32)
        elif a.shape[-1] == 3:
            rgba = np.concatenate([np.clip(a, 0, 1), np.ones(a.shape[:2] + (1,), np.float32)], axis=-1)
        else:
            rgba = np.clip(a, 0, 1)
        self.sheet.paint(self.x0, self.y0, self.side, rgba)

    def contour(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, **kwargs: object) -> None:
        """``x``, ``y`` in the panel's unit square (0 = left/top), as with ``extent=(0, 1, 1, 0)``."""
        self.sheet.ax.contour(self.x0 + np.asarray(x) * self.side, self.y0 + np.asarray(y) * self.side, z,
                              zorder=2, **kwargs)  # type: ignore[arg-type]

    def set_title(self, text: str, fontsize: float = 8) -> None:
        self.sheet.ax.text(self.x0 + self.side / 2, self.y0 - 0.04, text, ha="center", va="bottom",
                           fontsize=fontsize)

    def set_ylabel(self, text: str, fontsize: float = 8) -> None:
        self.sheet.ax.text(self.x0 - 0.05, self.y0 + self.side / 2, text, ha="right", va="center",
                           rotation=90, multialignment="center", fontsize=fontsize)


def _grid(rows: int, cols: int) -> tuple[Sheet, np.ndarray]:
    """A :class:`Sheet` (Agg canvas, not registered with pyplot) with a rows x cols grid of
    panels, laid out as ``subplots`` with ``wspace = hspace = 0.06`` would place them."""
    sheet = Sheet(rows, cols)
    gap = 0.06
    cell_w = cols * CELL / (cols + gap * (cols - 1))
    cell_h = rows * CELL / (rows + gap * (rows - 1))
    side = min(cell_w, cell_h)  # square images, centred in their cells (imshow's equal aspect)
    panels = np.empty((rows, cols), dtype=object)
    for i in range(rows):
        for j in range(cols):
            x0 = LEFT + j * cell_w * (1 + gap) + (cell_w - side) / 2
            y0 = TOP + i * cell_h * (1 + gap) + (cell_h - side) / 2
            panels[i, j] = Panel(sheet, x0, y0, side)
    frames = [Rectangle((p.x0, p.y0), side, side) for p in panels.flat]
    sheet.ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="black", linewidth=0.8,
                                            zorder=3))
    return sheet, panels


def _save(sheet: Sheet, path: str | Path) -> Path:
    return sheet.save(path)


def _show_image(ax: Panel, img: np.ndarray, image_channels: int | None = None) -> None:
    """Draw a ``(C, H, W)`` array in [0, 1]: gray for 1 image channel, RGB for 3."""
    c = image_channels or image_channels_for(img.shape[0])
    if c == 1:
        ax.imshow(np.clip(img[0], 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                  extent=(0, 1, 1, 0))
    else:
        ax.imshow(np.clip(img[:3].transpose(1, 2, 0), 0, 1), interpolation="nearest",
                  extent=(0, 1, 1, 0))


def _show_map(ax: Panel, m: np.ndarray, cmap: str, vmax: float | None = None) -> None:
    """A single-channel map (difference, mask) with a fixed [0, vmax] colour scale."""
    top = float(m.max()) if vmax is None else vmax
    ax.imshow(m, cmap=cmap, vmin=0, vmax=max(top, 1e-12), interpolation="nearest", extent=(0, 1, 1, 0))


def _overlay(ax: Panel, img: np.ndarray, mask: np.ndarray, image_channels: int | None = None) -> None:
    """Mask drawn in translucent red over the image; both fill the panel whatever their sizes."""
    _show_image(ax, img, image_channels)
    rgba = np.zeros(mask.shape + (4,), dtype=np.float32)
    rgba[..., :3] = OVERLAY_RGB
    rgba[..., 3] = OVERLAY_ALPHA * np.clip(mask, 0, 1)
    ax.imshow(rgba, interpolation="nearest", extent=(0, 1, 1, 0))


# ---- mask pipeline -----------------------------------------------------------------------------
def mask_pipeline_figure(steps: MaskSteps, images: Tensor | np.ndarray, path: str | Path, n: int = 6,
                         overlay_images: Tensor | np.ndarray | None = None) -> Path:
    """One row per image: image, the two decodes, |difference|, blurred, mask, overlay.

    The difference and blurred panels share one colour scale per row (the row's largest
    difference), and the blurred panel outlines the threshold level in cyan, so one can see
    why a pixel made it into the mask. The overlay uses ``overlay_images`` (the child-resolution
    images the child will see) when given, otherwise the parent-resolution images.
    """
    img = _np(images)
    rows = min(n, img.shape[0], steps.mask.shape[0])
    if rows < 1:
        raise ValueError("no images to draw")
    img_c = image_channels_for(img.shape[1])
    over = _np(overlay_images) if overlay_images is not None else img
    minus, plus = _np(steps.decoded_minus), _np(steps.decoded_plus)
    diff, blurred, mask = _np(steps.difference), _np(steps.blurred), _np(steps.mask)
    sigma = f"σ={steps.blur_sigma:g}" if steps.blur_sigma > 0 else "no blur"
    k = steps.latent if steps.latent >= 0 else "k"
    titles = ["image", f"decode μ − δ/2·e_{k}", f"decode μ + δ/2·e_{k}", "|difference|",
              f"blurred ({sigma})", f"{steps.kind} mask", "overlay"]
    fig, axes = _grid(rows, len(titles))
    for j, t in enumerate(titles):
        axes[0, j].set_title(t, fontsize=8)
    for i in range(rows):
        ax = axes[i]
        _show_image(ax[0], img[i], img_c)
        _show_image(ax[1], minus[i], img_c)
        _show_image(ax[2], plus[i], img_c)
        scale = float(max(diff[i].max(), blurred[i].max()))
        _show_map(ax[3], diff[i, 0], "magma", scale)
        _show_map(ax[4], blurred[i, 0], "magma", scale)
        t = steps.threshold
        b = blurred[i, 0]
        if np.isfinite(t) and b.min() < t < b.max():
            h, w = b.shape
            ax[4].contour((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h, b, levels=[t],
                          colors="cyan", linewidths=0.8)
        _show_map(ax[5], mask[i, 0], "gray", 1.0)
        _overlay(ax[6], over[i], mask[i, 0], img_c)
        cov = float(mask[i, 0].mean())
        ax[0].set_ylabel(f"#{i}\ncover {cov:.1%}\nmax|Δ| {diff[i].max():.2g}", fontsize=7)
    fig.suptitle(f"mask for latent {steps.latent}: δ = {steps.delta:.3g}, threshold = {steps.threshold:.3g}, "
                 f"nuisance {steps.nuisance}", fontsize=9)
    return _save(fig, path)


# ---- traversals --------------------------------------------------------------------------------
def traversal_figure(model: nn.Module, images_or_mu: Tensor | np.ndarray, path: str | Path,
                     latents: Sequence[int] | None = None, span: float = 2.5, steps: int = 9,
                     kl_per_latent: Tensor | np.ndarray | Sequence[float] | None = None, *,
                     image_channels: int | None = None) -> Path:
    """Rows = latents, columns = offsets ``-span..span`` from one reference posterior mean.

    ``images_or_mu``: images ``(B, C, R, R)`` (encoded; the first image's posterior mean is the
    reference) or means ``(B, D)``/``(D,)`` (the first row is the reference). With
    ``kl_per_latent`` the rows are sorted by decreasing KL and the KL is printed in the row
    label, so informative latents come first and collapsed ones are visibly collapsed.
    ``image_channels`` (1 or 3) overrides which decoder channels are the image; by default it
    is the images' channel count, or inferred from the decoder's output (2 or 4 = image +
    mask). Decoding runs in eval mode without gradients; the model's mode is restored.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    x = torch.as_tensor(images_or_mu)
    device = module_device(model)
    with torch.no_grad(), eval_mode(model):
        if x.ndim == 4:
            if image_channels is None:
                image_channels = image_channels_for(x.shape[1])
            xf = x[:1].float() / 255.0 if not x.is_floating_point() else x[:1].float()
            mu_ref = model.encode(xf.to(device))[0][0].float()
        elif x.ndim in (1, 2):
            mu_ref = (x if x.ndim == 1 else x[0]).float().to(device)
        else:
            raise ValueError(f"images_or_mu must be (B, C, R, R), (B, D) or (D,), got {tuple(x.shape)}")
        dim = mu_ref.shape[0]
        rows = list(range(dim)) if latents is None else [int(k) for k in latents]
        if any(not 0 <= k < dim for k in rows) or not rows:
            raise ValueError(f"latents {rows} out of range for {dim} latents")
        kl = None
        if kl_per_latent is not None:
            kl = _np(torch.as_tensor(kl_per_latent)).reshape(-1)
            rows.sort(key=lambda k: -float(kl[k]))
        offsets = torch.linspace(-span, span, steps, device=device)
        z = mu_ref.repeat(len(rows) * steps, 1)
        for r, k in enumerate(rows):
            z[r * steps:(r + 1) * steps, k] += offsets
        out = torch.sigmoid(model.decode(z).float()).cpu().numpy()
    c = image_channels or image_channels_for(out.shape[1])
    fig, axes = _grid(len(rows), steps)
    for j, v in enumerate(offsets.tolist()):
        axes[0, j].set_title(f"{v:+.2g}", fontsize=8)
    for r, k in enumerate(rows):
        for j in range(steps):
            _show_image(axes[r, j], out[r * steps + j], c)
        label = f"z{k}" if kl is None else f"z{k}\nKL {float(kl[k]):.2f}"
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"latent traversals: offsets from the reference posterior mean (span ±{span:g})",
                 fontsize=9)
    return _save(fig, path)


# ---- reconstructions ---------------------------------------------------------------------------
def reconstruction_figure(images: Tensor | np.ndarray, reconstructions: Tensor | np.ndarray,
                          path: str | Path, masks: Tensor | np.ndarray | None = None, n: int = 8,
                          *, from_logits: bool = False) -> Path:
    """Originals (top row) over reconstructions (second row), and masks if given (third row).

    ``reconstructions`` are probabilities in [0, 1]; pass decoder logits with
    ``from_logits=True`` (guessing would silently mis-draw one or the other). Reconstructions
    with more channels than ``images`` (a child that reconstructs its mask too) are drawn from
    the image channels. Masks may be at another resolution; each fills its panel.
    """
    img = _np(images)
    rec = _np(reconstructions)
    if from_logits:
        rec = torch.sigmoid(torch.from_numpy(rec)).numpy()
    cols = min(n, img.shape[0], rec.shape[0])
    if cols < 1:
        raise ValueError("no images to draw")
    c = image_channels_for(img.shape[1])
    labels = ["original", "reconstruction"] + (["mask"] if masks is not None else [])
    fig, axes = _grid(len(labels), cols)
    m = _np(masks) if masks is not None else None
    for j in range(cols):
        _show_image(axes[0, j], img[j], c)
        _show_image(axes[1, j], rec[j], c)
        if m is not None:
            _show_map(axes[2, j], m[j, 0], "gray", 1.0)
        axes[0, j].set_title(f"#{j}", fontsize=8)
    for r, label in enumerate(labels):
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle("reconstructions", fontsize=9)
    return _save(fig, path)
