"""``cnnzoo show``: what a network learned and where it looks.

- ``show filters RUN_OR_MODEL``: the first convolution's kernels as small images, each scaled to its own range (the
  picture of Krizhevsky et al. 2012, Figure 3), for a trained run or a fresh model (for contrast).
- ``show features RUN IMAGE``: the feature maps after each stage (stem, ResNet stage, VGG/AlexNet pool, Inception
  group), the most active channels of each.
- ``show cam RUN [RUN ...] IMAGE [IMAGE ...]``: Grad-CAM heat maps (Selvaraju et al., ICCV 2017) for the predicted
  class (or ``--class NAME``), one row per run and one column per image.
- ``show mistakes RUN``: the test images the run got most confidently wrong, with the CAMs of both classes.

Each command draws one PNG; the arrays behind it come from :func:`filter_images`, :func:`feature_maps`,
:func:`grad_cam` and :func:`find_mistakes`, so a notebook can draw them its own way.

Attributions come from captum (``LayerGradCam`` and ``LayerAttribution.interpolate``), the ``cnnzoo[show]`` extra,
not pytorch-grad-cam. Both compute the same Grad-CAM; captum is PyTorch's own library and adds only tqdm and packaging
to what cnnzoo already installs (pytorch-grad-cam adds OpenCV, ttach and tqdm), it works on a batch with one
target class per image and returns tensors, and it leaves each map's scale alone, where pytorch-grad-cam min-max
normalises every map in numpy and resizes it with cv2. Here the figures normalise once, visibly, under a labelled
colour bar, and :func:`grad_cam` returns the raw (ReLU'd, upsampled) maps.

The layer a CAM reads from is the model's ``cam_layer`` (its last convolutional stage) and the feature-map stages
are its ``stages``, both named in each family's file.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used, so `cnnzoo --help` needs no torch
    import numpy as np
    import torch
    from torch import nn

from cnnzoo.atomic import write_figure
from cnnzoo.errors import CnnzooError


def model_layers(model: nn.Module) -> tuple[str, tuple[str, ...]]:
    """``(cam_layer, stages)``: the submodule names Grad-CAM reads from and the feature maps are taken after."""
    cam, stages = getattr(model, "cam_layer", None), getattr(model, "stages", None)
    if not cam or not stages:
        raise CnnzooError(f"{type(model).__name__}: the model names no cam_layer and stages to show")
    return cam, tuple(stages)


def _captum():
    """captum's Grad-CAM pieces, or the one-line error naming the extra."""
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError:
        raise CnnzooError("Grad-CAM needs captum: pip install 'cnnzoo[show]'") from None
    return LayerGradCam, LayerAttribution


# --- what to show: a run or a fresh model, and images ----------------------------------------------------------------


def load_subject(
    spec: str | os.PathLike,
    *,
    which: str = "best",
    in_channels: int = 3,
    weights: str | None = None,
    download: bool = False,
) -> tuple[nn.Module, dict]:
    """``(model in eval mode, meta)`` for a run directory (its trained weights) or a model name: with ``weights``
    (any spec :func:`cnnzoo.create_model` takes: a torchvision name such as ``IMAGENET1K_V1``, a state_dict file, a
    run directory) those weights, else a fresh, seeded initialisation, for contrast. ``meta`` has the checkpoint's
    metadata (classes, in_channels, image_size, mean, std) when there is one, and ``label``, a caption for figures."""
    import torch

    from cnnzoo.models import create_model, list_models
    from cnnzoo.train.trained import load_checkpoint

    path = Path(spec)
    if path.is_dir():
        ckpt, model = load_checkpoint(path, which)
        meta = ckpt["meta"]
        return model, {**meta, "label": f"{meta['model']} trained on {meta['data']} ({path.name}, {which}.pt)"}
    name = str(spec)
    if in_channels < 1:
        raise CnnzooError(f"--in-channels must be >= 1, got {in_channels}")
    if weights is not None and name in list_models():
        model = create_model(name, weights=weights, download=download)
        return model.eval(), {"model": name, "in_channels": 3, "label": f"{name}, weights {weights}"}
    if name in list_models():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(name, in_channels=in_channels)
        return model.eval(), {"model": name, "in_channels": in_channels, "label": f"{name}, untrained (seed 0 init)"}
    raise CnnzooError(f"{name}: neither a run directory nor a model name (`cnnzoo models` lists them)")


def load_run_images(meta: dict, paths: list[str | os.PathLike]) -> torch.Tensor:
    """Image files preprocessed as the run's evaluation saw them: normalised ``(N, C, H, W)``."""
    from cnnzoo.data import load_images

    return load_images(
        [str(p) for p in paths],
        in_channels=meta["in_channels"],
        image_size=meta["image_size"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
    )


def to_display(images: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """Normalised ``(N, C, H, W)`` -> ``(N, H, W, C)`` in [0, 1] for ``imshow``."""
    import torch

    c = images.shape[1]
    x = images.detach().float().cpu() * torch.tensor(std).view(1, c, 1, 1) + torch.tensor(mean).view(1, c, 1, 1)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def class_index(meta: dict, name: str, where: str) -> int:
    """The index of class ``name`` in a run, or a one-line error listing the run's classes."""
    classes = list(meta["classes"])
    if name not in classes:
        shown = ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")
        raise CnnzooError(f"--class {name!r}: not a class of {where} (its classes: {shown})")
    return classes.index(name)


# --- the arrays --------------------------------------------------------------------------------------------------


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution (every family registers its stem convolution first)."""
    from torch import nn

    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise CnnzooError(f"{type(model).__name__}: no convolution to show")
    return conv


def filter_images(model: nn.Module) -> np.ndarray:
    """The first convolution's kernels as images, float ``(out_channels, kh, kw, 3)`` in [0, 1] for RGB input,
    ``(out_channels, kh, kw, 1)`` (the mean over input channels) otherwise.

    Each kernel is scaled to its own min..max, as in Krizhevsky et al. 2012, Figure 3: the pictures show each
    filter's pattern, not the kernels' relative strength.
    """
    import torch

    w = first_conv(model).weight.detach().float().cpu()  # (out, in, kh, kw)
    if w.shape[1] != 3:
        w = w.mean(1, keepdim=True)
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    span = w.amax(dim=(1, 2, 3), keepdim=True) - lo
    scaled = torch.where(span > 0, (w - lo) / span.clamp_min(1e-12), torch.full_like(w, 0.5))
    return scaled.permute(0, 2, 3, 1).numpy()


def filter_mosaic(images: np.ndarray, cols: int | None = None, gap: int = 1) -> np.ndarray:
    """Tile ``(N, kh, kw, C)`` kernel images into one ``(rows * (kh + gap) - gap, cols * (kw + gap) - gap, C)``
    picture, row by row, ``gap`` pixels apart; the gaps (and unused tiles) are NaN, so no kernel value is mistaken for
    background."""
    import numpy as np

    n, kh, kw, c = images.shape
    cols = cols or math.ceil(math.sqrt(n * 1.5))  # a little wider than tall, as a page is
    rows = math.ceil(n / cols)
    out = np.full((rows * (kh + gap) - gap, cols * (kw + gap) - gap, c), np.nan, dtype=np.float32)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        out[r * (kh + gap) : r * (kh + gap) + kh, q * (kw + gap) : q * (kw + gap) + kw] = img
    return out


def feature_maps(
    model: nn.Module, image: torch.Tensor, *, top: int = 8, stages: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    """The output of each stage for one image ``(1, C, H, W)``: a list (input to output) of dicts with ``stage``,
    ``shape`` ``(C, H, W)``, ``channels`` (the ``top`` most active, by mean activation, most active first) and
    ``maps`` (float ``(top, H, W)``)."""
    import torch

    stages = stages or model_layers(model)[1]
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in stages:
        # clone: a stage's output may be changed in place later (an inplace ReLU after a stem conv).
        hook = lambda m, i, out, name=name: outputs.setdefault(name, out.detach().float().cpu().clone())  # noqa: E731
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(image[:1])
    finally:
        for h in handles:
            h.remove()
    result = []
    for name in stages:
        fmap = outputs[name][0]  # (C, H, W)
        order = fmap.mean(dim=(1, 2)).argsort(descending=True)[:top]
        result.append(
            {"stage": name, "shape": tuple(fmap.shape), "channels": order.tolist(), "maps": fmap[order].numpy()}
        )
    return result


def grad_cam(
    model: nn.Module, images: torch.Tensor, *, target: int | torch.Tensor | None = None, layer: str | None = None
) -> dict[str, Any]:
    """Grad-CAM of ``images`` ``(N, C, H, W)`` at ``layer`` (default: the model's ``cam_layer``).

    ``target``: the class whose evidence is mapped, one for all images or one per image; default the predicted
    class. Returns ``cam`` (float ``(N, H, W)``, >= 0: ReLU of the gradient-weighted channel sum, upsampled
    bilinearly to the input size, unnormalised), ``target`` ``(N,)``, ``probs`` ``(N, classes)``, ``layer`` and
    ``layer_size`` (the map's ``(h, w)`` before upsampling).
    """
    import torch

    layer_gradcam, layer_attribution = _captum()
    layer = layer or model_layers(model)[0]
    model.eval()
    with torch.no_grad():
        probs = model(images).float().softmax(1)
    if target is None:
        target = probs.argmax(1)
    target = torch.as_tensor(target, device=images.device).expand(images.shape[0]).contiguous()
    attr = layer_gradcam(model, model.get_submodule(layer)).attribute(images, target=target, relu_attributions=True)
    cam = layer_attribution.interpolate(attr.detach().float(), tuple(images.shape[-2:]), interpolate_mode="bilinear")
    return {
        "cam": cam[:, 0].cpu().numpy(),
        "target": target.cpu().numpy(),
        "probs": probs.cpu().numpy(),
        "layer": layer,
        "layer_size": tuple(attr.shape[-2:]),
    }


def find_mistakes(
    run_dir: str | os.PathLike, *, count: int = 8, which: str = "best", device: str = "auto"
) -> dict[str, Any]:
    """The ``count`` test images the run got wrong with the highest predicted probability, most confident first.

    Returns ``images`` (float ``(k, H, W, C)`` in [0, 1]), ``true``, ``pred`` (class indices), ``confidence`` (the
    predicted class's probability), ``true_prob``, ``cam_pred`` and ``cam_true`` (Grad-CAMs ``(k, H, W)`` for the
    predicted and the true class), ``classes``, ``layer``, ``layer_size``, ``n_test``, ``n_wrong``, ``model`` and
    ``data``.
    """
    import numpy as np
    import torch

    from cnnzoo.train.config import config_from_dict
    from cnnzoo.train.distributed import Dist
    from cnnzoo.train.engine import resolve_device
    from cnnzoo.train.run import load_bundle
    from cnnzoo.train.trained import load_checkpoint

    if count < 1:
        raise CnnzooError(f"--count must be >= 1, got {count}")
    _captum()  # fail before the pass over the test split
    ckpt, model = load_checkpoint(run_dir, which)
    meta, dev = ckpt["meta"], resolve_device(device)
    data = load_bundle(config_from_dict(ckpt["config"]), dev, Dist(), augment=False)
    if data.num_classes != meta["num_classes"]:
        raise CnnzooError(
            f"{run_dir}: the data now has {data.num_classes} classes, the checkpoint {meta['num_classes']}"
        )
    if data.test.num_samples == 0:
        raise CnnzooError(f"{run_dir}: the run has no test split")
    model = model.to(dev).eval()
    kept, n_wrong = _most_confident_mistakes(model, data.test, count)
    if not kept:
        raise CnnzooError(f"{run_dir}: no mistakes on the {data.test.num_samples} test images")
    x = torch.stack([t[1] for t in kept]).to(dev)
    true, pred = torch.tensor([t[2] for t in kept]), torch.tensor([t[3] for t in kept])
    by_pred, by_true = grad_cam(model, x, target=pred.to(dev)), grad_cam(model, x, target=true.to(dev))
    return {
        "images": to_display(x, meta["mean"], meta["std"]),
        "true": true.numpy(),
        "pred": pred.numpy(),
        "confidence": np.array([t[0] for t in kept]),
        "true_prob": by_true["probs"][np.arange(len(kept)), true],
        "cam_pred": by_pred["cam"],
        "cam_true": by_true["cam"],
        "classes": list(meta["classes"]),
        "layer": by_pred["layer"],
        "layer_size": by_pred["layer_size"],
        "n_test": data.test.num_samples,
        "n_wrong": n_wrong,
        "model": meta["model"],
        "data": meta["data"],
    }


def _most_confident_mistakes(model, loader, count: int) -> tuple[list[tuple], int]:
    """The ``count`` wrong predictions on ``loader``'s images with the highest confidence, most confident first, as
    (confidence, image on the CPU, true class, predicted class), and how many were wrong in all."""
    import torch

    kept: list[tuple[float, torch.Tensor, int, int]] = []  # the best `count` so far
    n_wrong = 0
    with torch.no_grad():
        for images, labels in loader.epoch(0):
            conf, pred = model(images).float().softmax(1).max(1)
            wrong = (pred != labels).nonzero().flatten().tolist()
            n_wrong += len(wrong)
            kept += [(conf[i].item(), images[i].cpu(), labels[i].item(), pred[i].item()) for i in wrong]
            kept = sorted(kept, key=lambda t: -t[0])[:count]
    return kept, n_wrong


# --- the figures --------------------------------------------------------------------------------------------------

CAM_CMAP = "jet"  # the Grad-CAM paper's colouring
CAM_LABEL = "Grad-CAM (each map / its max)"


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically, after checking the name is a .png file's."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise CnnzooError(f"{path}: expected a .png file name")
    if path.is_dir():
        raise CnnzooError(f"{path}: is a directory, expected a .png file name")
    write_figure(fig, path)
    return path


def _show_image(ax, image: np.ndarray) -> None:
    """``(H, W, C)`` in [0, 1]: colour, or grey for one channel; no ticks (the axis keeps its labels)."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax, image: np.ndarray, cam: np.ndarray):
    """The image with its Grad-CAM over it, the map scaled to its own max; returns the heat map's artist."""
    _show_image(ax, image)
    peak = cam.max()
    return ax.imshow(cam / peak if peak > 0 else cam, cmap=CAM_CMAP, vmin=0, vmax=1, alpha=0.5)


def plot_filters(images: np.ndarray, path: str | os.PathLike, *, title: str) -> Path:
    """The kernels of :func:`filter_images` as one tiled picture (gaps in light blue, not a kernel colour)."""
    import numpy as np
    from matplotlib.figure import Figure

    n, kh, kw, c = images.shape
    mosaic = filter_mosaic(images)
    gap = np.array([0.75, 0.85, 1.0])
    width = max(6.0, min(14.0, mosaic.shape[1] / 12))  # inches: about 12 kernel pixels per inch, within a page
    fig = Figure(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + 1.2), layout="constrained")
    ax = fig.subplots()
    if c == 1:
        grey = np.repeat(mosaic, 3, axis=2)
        ax.imshow(np.where(np.isnan(grey), gap, grey))
    else:
        ax.imshow(np.where(np.isnan(mosaic), gap, mosaic))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    colour = "RGB" if c == 3 else "grey: mean over input channels"
    ax.set_xlabel(f"{n} kernels of {kh}x{kw} ({colour}), each scaled to its own min..max", fontsize=9)
    return save_figure(fig, path)


def plot_features(image: np.ndarray, stages: list[dict[str, Any]], path: str | os.PathLike, *, title: str) -> Path:
    """The input on the left; one row per stage of its most active channels, one colour scale (and bar) per row."""
    from matplotlib.figure import Figure

    top = max(len(s["channels"]) for s in stages)
    fig = Figure(figsize=(2.2 + 1.25 * top, 0.6 + 1.3 * len(stages)), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[2.0, 1.25 * top])
    ax = left.subplots()
    _show_image(ax, image)
    ax.set_title("input", fontsize=9)
    grid = right.subplots(len(stages), top, squeeze=False)
    for row, stage in zip(grid, stages, strict=True):
        maps = stage["maps"]
        lo, hi = float(maps.min()), float(maps.max())
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(maps):
                ax.set_axis_off()
                continue
            im = ax.imshow(maps[j], cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1)
            ax.set_title(f"ch {stage['channels'][j]}", fontsize=8)
        c, h, w = stage["shape"]
        row[0].set_ylabel(f"{stage['stage']}\n{c}x{h}x{w}", fontsize=9)
        right.colorbar(im, ax=list(row), shrink=0.8, pad=0.01).ax.tick_params(labelsize=7)
    fig.suptitle(
        f"{title}\nfeature maps after each stage: the {top} most active channels (mean activation)", fontsize=10
    )
    return save_figure(fig, path)


def plot_cams(
    rows: list[dict[str, Any]], path: str | os.PathLike, *, title: str, captions: list[str] | None = None
) -> Path:
    """One row per run (``label``, ``images`` ``(N, H, W, C)``, ``cam`` ``(N, H, W)``, ``titles``), one column per
    image, one shared colour bar. ``captions`` (one per image: its file, its true class when known): a first row
    shows the images as they are, without a map over them, under these captions."""
    from matplotlib.figure import Figure

    n = len(rows[0]["titles"])
    first = 1 if captions is not None else 0
    width = 1.6 + 2.0 * n
    fig = Figure(figsize=(width, 1.0 + 2.1 * (len(rows) + first)), layout="constrained")
    axes = fig.subplots(len(rows) + first, n, squeeze=False)
    if captions is not None:
        for ax, image, text in zip(axes[0], rows[0]["images"], captions, strict=True):
            _show_image(ax, image)
            ax.set_title(text, fontsize=9)
        axes[0][0].set_ylabel("input", fontsize=9)
    for ax_row, row in zip(axes[first:], rows, strict=True):
        for ax, image, cam, text in zip(ax_row, row["images"], row["cam"], row["titles"], strict=True):
            heat = _overlay(ax, image, cam)
            ax.set_title(text, fontsize=9)
        ax_row[0].set_ylabel(row["label"], fontsize=9)
    # One row of maps is about 2 inches tall: the bar's label is set in two short lines so it fits beside it.
    bar = fig.colorbar(heat, ax=axes[first:], shrink=0.9 if len(rows) == 1 else 0.8)
    bar.set_label(CAM_LABEL.replace(" (", "\n("), fontsize=8)
    fig.suptitle(fit_title(title, width, 10), fontsize=10)
    return save_figure(fig, path)


def fit_title(title: str, width_inches: float, fontsize: float) -> str:
    """``title`` with each line wrapped to what ``width_inches`` holds at ``fontsize`` (a character is about 0.55
    em wide in DejaVu Sans), so a narrow figure's title is never cut at both edges."""
    import textwrap

    chars = max(20, int(0.92 * width_inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in title.splitlines())


def plot_mistakes(m: dict[str, Any], path: str | os.PathLike, *, title: str) -> Path:
    """Three rows per mistake column: the image (true and predicted class), the CAM of the predicted class, the CAM
    of the true class."""
    from matplotlib.figure import Figure

    k, names = len(m["true"]), m["classes"]
    fig = Figure(figsize=(1.4 + 1.9 * k, 7.0), layout="constrained")
    axes = fig.subplots(3, k, squeeze=False)
    for j in range(k):
        t, p = names[m["true"][j]], names[m["pred"][j]]
        _show_image(axes[0, j], m["images"][j])
        axes[0, j].set_title(f"true {t}\npred {p} {100 * m['confidence'][j]:.0f}%", fontsize=9)
        heat = _overlay(axes[1, j], m["images"][j], m["cam_pred"][j])
        axes[1, j].set_title(f"{p}", fontsize=9)
        _overlay(axes[2, j], m["images"][j], m["cam_true"][j])
        axes[2, j].set_title(f"{t} {100 * m['true_prob'][j]:.0f}%", fontsize=9)
    for ax, label in zip(axes[:, 0], ("test image", "CAM: predicted", "CAM: true class"), strict=True):
        ax.set_ylabel(label, fontsize=9)
    fig.colorbar(heat, ax=axes[1:, :], shrink=0.8, label=CAM_LABEL)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


# --- the commands ------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``show`` with its four sub-commands."""
    show = sub.add_parser(
        "show",
        help="see inside: learned filters, feature maps, Grad-CAM, confident mistakes",
        description="Each command writes one PNG into the current folder, named after what it shows "
        "(filters-RUN.png, features-RUN-IMAGE.png, cam-RUN.png, mistakes-RUN.png), unless --out names another.",
    )
    ssub = show.add_subparsers(dest="show", metavar="WHAT", required=True)
    which = {"choices": ("best", "last"), "default": "best", "help": "the run's checkpoint (default best)"}

    p = ssub.add_parser("filters", help="the first convolution's kernels (Krizhevsky et al. 2012, Figure 3)")
    p.add_argument("subject", metavar="RUN_OR_MODEL", help="a run directory, or a model name (fresh init)")
    p.add_argument("--in-channels", type=int, default=3, help="input channels of a fresh model (default 3)")
    p.add_argument(
        "--weights",
        default=None,
        help="with a model name: pretrained weights (torchvision name such as IMAGENET1K_V1, a .pth file, a run)",
    )
    p.add_argument("--download", action="store_true", help="fetch missing torchvision weights (needs the network)")
    p.add_argument("--checkpoint", **which)
    p.add_argument("--out", default=None, help="PNG to write (default ./filters-RUN.png or ./filters-MODEL.png)")
    p.set_defaults(func=cmd_filters)

    p = ssub.add_parser("features", help="feature maps after each stage, the most active channels")
    p.add_argument("run", metavar="RUN")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--top", type=int, default=8, help="channels shown per stage (default 8)")
    p.add_argument("--checkpoint", **which)
    p.add_argument("--out", default=None, help="PNG to write (default ./features-RUN-IMAGE.png)")
    p.set_defaults(func=cmd_features)

    p = ssub.add_parser("cam", help="Grad-CAM heat maps: one row per run, one column per image")
    p.add_argument("paths", nargs="+", metavar="RUN [RUN ...] IMAGE", help="run directories, then image files")
    p.add_argument("--class", dest="class_name", default=None, help="map this class (default: the predicted one)")
    p.add_argument("--checkpoint", **which)
    p.add_argument("--out", default=None, help="PNG to write (default ./cam-RUN[-vs-RUN...].png)")
    p.set_defaults(func=cmd_cam)

    p = ssub.add_parser("mistakes", help="the test images the run got most confidently wrong, with their CAMs")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--count", type=int, default=8, help="how many mistakes (default 8)")
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", **which)
    p.add_argument("--out", default=None, help="PNG to write (default ./mistakes-RUN.png)")
    p.set_defaults(func=cmd_mistakes)


def _done(path: Path) -> int:
    print(path)
    return 0


def default_out(kind: str, *subjects: str | os.PathLike, image: str | os.PathLike | None = None) -> Path:
    """Where a ``show`` command writes without ``--out``: the current folder, whatever its arguments (never into a
    run directory, which holds only what training wrote), as ``KIND-SUBJECT[-vs-SUBJECT...][-IMAGE].png``; a subject
    is a run folder's or a model's name, ``image`` a file name without its suffix."""
    names = [Path(s).resolve().name if Path(s).is_dir() else str(s) for s in subjects]
    shown = "-vs-".join(names[:3]) + ("-etc" if len(names) > 3 else "")
    return Path(f"{kind}-{shown}{'-' + Path(image).stem if image is not None else ''}.png")


def cmd_filters(args: argparse.Namespace) -> int:
    model, meta = load_subject(
        args.subject, which=args.checkpoint, in_channels=args.in_channels, weights=args.weights, download=args.download
    )
    out = args.out or default_out("filters", args.subject)
    kh, kw = first_conv(model).kernel_size
    title = f"{meta['label']}\nthe first convolution's {kh}x{kw} kernels"
    return _done(plot_filters(filter_images(model), out, title=title))


def cmd_features(args: argparse.Namespace) -> int:
    import torch

    if args.top < 1:
        raise CnnzooError(f"--top must be >= 1, got {args.top}")
    model, meta = load_subject(_run_dir(args.run), which=args.checkpoint)
    x = load_run_images(meta, [args.image])
    stages = feature_maps(model, x, top=args.top)
    with torch.no_grad():
        prob, pred = model(x).float().softmax(1).max(1)
    title = f"{meta['label']}: {Path(args.image).name} -> {meta['classes'][pred.item()]} {100 * prob.item():.0f}%"
    out = args.out or default_out("features", args.run, image=args.image)
    return _done(plot_features(to_display(x, meta["mean"], meta["std"])[0], stages, out, title=title))


def _run_dir(path: str) -> str:
    """``path`` if it is a directory (a run), else the one-line error."""
    if not Path(path).is_dir():
        raise CnnzooError(f"{path}: no such run directory")
    return path


def split_runs_images(paths: list[str]) -> tuple[list[str], list[str]]:
    """``RUN [RUN ...] IMAGE [IMAGE ...]``: the leading directories are runs, the files after them images."""
    for p in paths:
        if not Path(p).exists():
            raise CnnzooError(f"{p}: no such run directory or image file")
    n_runs = next((i for i, p in enumerate(paths) if not Path(p).is_dir()), len(paths))
    runs, images = paths[:n_runs], paths[n_runs:]
    if not runs:
        raise CnnzooError(f"{paths[0]}: expected a run directory first, then image files")
    if not images:
        raise CnnzooError("no image files given after the run directories")
    late = next((p for p in images if Path(p).is_dir()), None)
    if late is not None:
        raise CnnzooError(f"{late}: a directory among the images (run directories come first)")
    return runs, images


def cmd_cam(args: argparse.Namespace) -> int:
    runs, images = split_runs_images(args.paths)
    _captum()
    rows, layers = [], []
    for run in runs:
        model, meta = load_subject(run, which=args.checkpoint)
        target = None if args.class_name is None else class_index(meta, args.class_name, run)
        x = load_run_images(meta, images)
        r = grad_cam(model, x, target=target)
        names = meta["classes"]
        titles = []
        for probs in r["probs"]:
            pred = int(probs.argmax())
            text = f"{names[pred]} {100 * probs[pred]:.0f}%"
            if target is not None and target != pred:
                text = f"{names[target]} {100 * probs[target]:.0f}%\n(pred {text})"
            titles.append(text)
        rows.append(
            {
                "label": meta["model"] + ("" if Path(run).resolve().name == meta["model"] else f"\n{Path(run).name}"),
                "images": to_display(x, meta["mean"], meta["std"]),
                "cam": r["cam"],
                "titles": titles,
            }
        )
        layers.append(f"{meta['model']}: {r['layer']} {r['layer_size'][0]}x{r['layer_size'][1]}")
    what = f"class {args.class_name!r}" if args.class_name else "the predicted class"
    title = f"Grad-CAM for {what} (panel title: class and probability)\nCAM layer {'; '.join(layers)}"
    out = args.out or default_out("cam", *runs)
    return _done(plot_cams(rows, out, title=title, captions=[_caption(p, meta["classes"]) for p in images]))


def _caption(image: str | os.PathLike, classes: list[str]) -> str:
    """An image's file name, and its true class when its folder is named after one of ``classes`` (image folders'
    ``class_name/image`` layout)."""
    path = Path(image)
    true = f"\ntrue class: {path.parent.name}" if path.parent.name in classes else ""
    return f"{path.name}{true}"


def cmd_mistakes(args: argparse.Namespace) -> int:
    m = find_mistakes(_run_dir(args.run), count=args.count, which=args.checkpoint, device=args.device)
    h, w = m["layer_size"]
    title = (
        f"{m['model']} trained on {m['data']} ({Path(args.run).name})\nthe {len(m['true'])} most confident of "
        f"{m['n_wrong']} mistakes on {m['n_test']} test images; Grad-CAM at {m['layer']} ({h}x{w})"
    )
    return _done(plot_mistakes(m, args.out or default_out("mistakes", args.run), title=title))
