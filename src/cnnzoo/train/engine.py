"""The pieces of one training step, reusable outside the trainer (``cnnzoo compare`` times ``train_step`` with them).
The learning-rate schedule lives in :mod:`cnnzoo.train.schedule`.

- :func:`setup_training`: the one set-up of a model for training (device, layout, SyncBN and DDP, optimizer,
  numerics, torch.compile), used by the trainer and by ``cnnzoo compare``; :func:`backend_settings` around it sets
  the process-wide backend flags for the run and restores them afterwards.
- :func:`make_optimizer`: SGD (momentum, Nesterov) or AdamW, with weight decay off for BN and bias parameters by
  default (Goyal et al. 2017, arXiv:1706.02677, section 5.1 and "Bag of Tricks", He et al. 2019, section 3.1:
  decaying them only pulls the BN scale and shift toward zero) and fused kernels on CUDA.
- :func:`train_step`: forward under autocast, loss (label smoothing, soft targets for mixup/cutmix, auxiliary
  classifier losses at ``aux_weight``), backward (with a GradScaler for fp16), gradient clipping, update.
- :class:`GraphedStep`: ``train_step`` captured once as a CUDA graph and replayed (``--cuda-graph``), for the
  small-batch steps that launch overhead, not arithmetic, bounds on a GPU.
- :func:`mix_batch`: mixup (Zhang et al. 2018, arXiv:1710.09412) or cutmix (Yun et al. 2019, arXiv:1905.04899),
  drawn from a generator seeded by (seed, step) so a resumed run mixes exactly as an uninterrupted one.

The residual-network papers' recipes differ only in the values they set here; see ``cnnzoo/recipes/*.toml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.errors import CnnzooError
from cnnzoo.train.config import NO_GRAPHED_FP16, TrainConfig
from cnnzoo.train.ema import EMA
from cnnzoo.train.schedule import lr_at, total_steps

# --- device and numerics -------------------------------------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if present, then MPS, else CPU. An unavailable device is a :class:`CnnzooError`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnzooError(f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnzooError(f"device {name!r} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CnnzooError(f"device {name!r} requested but MPS is not available")
    return device


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op off CUDA), so a clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA (where supported), fp32 on CPU and MPS. ``native-bf16`` -> bf16 also on a CPU with
    AMX bf16 units (measured on one: a resnet56 step 2.1x faster than fp32, benchmarks/cpu_precision.py), fp32 on
    any other CPU (there oneDNN emulates bf16: a resnet20 step measured 10.6x slower than fp32 with AVX2 only)."""
    if cfg.precision not in ("auto", "native-bf16"):
        return cfg.precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if cfg.precision == "native-bf16" and device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX; torch's own check, absent in old torch)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check is not None and check())


def autocast(precision: str, device: torch.device, cache: bool = True) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (a no-op for fp32); ``cache=False`` for a step under CUDA-graph
    capture (torch.cuda.graphs docs: autocast's weight-cast cache must not outlive the capture)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def configure_backends(cfg: TrainConfig, device: torch.device) -> None:
    """Threads, determinism and cudnn autotuning (benchmark on CUDA unless deterministic)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    if device.type == "cuda":  # TF32 convs/matmuls for fp32 work on Ampere+, as torchvision's reference scripts
        torch.backends.cuda.matmul.allow_tf32 = not cfg.deterministic
        torch.backends.cudnn.allow_tf32 = not cfg.deterministic


@contextlib.contextmanager
def backend_settings(cfg: TrainConfig, device: torch.device):
    """:func:`configure_backends` for the duration of a run, then the process-wide flags as they were (so a
    deterministic run inside a larger program, e.g. a test session, does not change what runs after it)."""
    cuda = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.get_num_threads(),
    )
    configure_backends(cfg, device)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = cuda
        if torch.get_num_threads() != saved[4]:
            torch.set_num_threads(saved[4])


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """channels_last unless ``cfg.channels_last`` says otherwise, on CUDA and the CPU; other devices keep NCHW.

    CUDA: tensor-core convolutions want NHWC. CPU: the data path hands out channels_last batches and oneDNN's
    convolutions follow their input's layout, so the step runs NHWC either way; putting the weights in the same
    layout says so. ``benchmarks/cpu_layout.py`` on the 2-core VM: the NHWC training step 1.03-1.50x as fast as the
    NCHW one for the CIFAR ResNets, VGG and GoogLeNet, 0.95x for AlexNet (its LRN computes on an NCHW view).
    """
    if cfg.channels_last is not None:
        return cfg.channels_last
    return device.type in ("cuda", "cpu")


def set_dropout(model: nn.Module, p: float) -> int:
    """Set ``p`` of every dropout layer; returns how many were changed."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in layers:
        m.p = p
    return len(layers)


# --- optimizer -----------------------------------------------------------------------------------------------------


def param_groups(
    model: nn.Module, weight_decay: float, exclude_bn_bias: bool = True, lr_scales: dict[str, float] | None = None
) -> list[dict]:
    """Decayed weights, and (if ``exclude_bn_bias``) undecayed 1-d tensors (BN scale/shift, biases); each split
    again by ``lr_scales`` (parameter name -> factor on the scheduled lr, default 1: see ``train.finetune``), which
    every group carries as ``lr_scale`` for :func:`set_lr`. Frozen parameters (``requires_grad=False``) are left out."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = not (exclude_bn_bias and p.ndim <= 1)
            groups.setdefault((decay, (lr_scales or {}).get(name, 1.0)), []).append(p)
    order = sorted(groups, key=lambda k: (not k[0], k[1] != 1.0))  # decayed first, then the classifier's scale
    return [
        {"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr_scale": k[1]}
        for k in order
        if groups[k] or k == (True, 1.0)
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer of :data:`OPTIMIZERS` that ``cfg.optimizer`` names (SGD or AdamW) over ``model``'s parameters,
    weight decay per :func:`param_groups`, fused on CUDA by default; an unknown name is one line.

    The lr set here is step 0's; the loop sets ``group["lr"] = lr_at(step, ...)`` before every step.
    """
    device = device or next(model.parameters()).device
    fused = device.type == "cuda" if cfg.fused is None else cfg.fused
    kw = {"fused": True} if fused else {}
    if cfg.optimizer == "adamw" and cfg.cuda_graph and device.type == "cuda":
        kw["capturable"] = True  # its step counters stay on the device, so GraphedStep can capture the update
    scales = None
    if cfg.backbone_lr_scale != 1.0:
        from cnnzoo.train.finetune import lr_scales

        scales = lr_scales(model, cfg.backbone_lr_scale)
    if cfg.optimizer not in OPTIMIZERS:
        raise CnnzooError(f"unknown optimizer {cfg.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    groups = param_groups(model, cfg.weight_decay, cfg.wd_exclude_bn_bias, scales)
    return OPTIMIZERS[cfg.optimizer](groups, cfg, kw)


def _sgd(groups: list[dict], cfg: TrainConfig, kw: dict) -> torch.optim.Optimizer:
    """SGD with momentum (every paper here); Nesterov's only with momentum, where it means something."""
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **kw)


def _adamw(groups: list[dict], cfg: TrainConfig, kw: dict) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019) with ``momentum`` as beta1, beta2 0.999."""
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), **kw)


# name -> maker(parameter groups, config, extra keyword arguments such as fused=True). The names are those of
# cnnzoo.train.config.OPTIMIZERS, which the config checks on its own (it imports no torch); a test keeps both equal.
OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig, dict], torch.optim.Optimizer]] = {"sgd": _sgd, "adamw": _adamw}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (the schedule is :func:`lr_at`, not a torch scheduler), times
    the group's ``lr_scale`` (layer-wise rates, :func:`param_groups`).

    A group whose lr is a tensor (:class:`GraphedStep` makes it one, so a captured update reads it) is filled in
    place: one small kernel, no host synchronisation.
    """
    for group in optimizer.param_groups:
        value = lr * group.get("lr_scale", 1.0)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def make_ema(model: nn.Module, decay: float) -> EMA:
    """An exponential moving average of the weights and BN buffers, updated once per step with no host work
    (:class:`cnnzoo.train.ema.EMA`: ``AveragedModel``'s numbers and state_dict, so older checkpoints load). Build it
    after the model is on its device and in its memory format: it binds to the model's tensors as they are."""
    return EMA(model, decay)


def lr_table(
    cfg: TrainConfig, steps_per_epoch: int, device: torch.device | str, warmup_end: int | None = None
) -> torch.Tensor:
    """:func:`~cnnzoo.train.schedule.lr_at` for every step of the run on ``device`` (what :class:`GraphedStep`
    indexes with its device-side step counter, so the loop sets no lr per step). float64 (float32 on MPS, which has
    none), as the Python float :func:`set_lr` multiplies by a group's ``lr_scale`` before rounding it to the float32
    lr tensor: the step does the same on the device, so both give the same float32 lr."""
    total = total_steps(cfg, steps_per_epoch)
    dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
    lrs = [lr_at(s, cfg, steps_per_epoch, warmup_end) for s in range(total)]
    return torch.tensor(lrs, dtype=dtype, device=device)


# --- mixup / cutmix ------------------------------------------------------------------------------------------------


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one of the two, with equal chance, when both are on): (images, soft targets (N, K)).

    Sample i is mixed with sample N-1-i (the batch reversed: timm's "flip" pairing, no extra permutation), with
    weight lambda ~ Beta(alpha, alpha); cutmix pastes a box of area (1 - lambda) and corrects lambda to the
    box's exact area after clipping at the border. Label smoothing is applied later by the loss.
    """
    onehot = F.one_hot(labels, num_classes).to(images.dtype)
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or torch.rand((), generator=generator).item() < 0.5)
    alpha = cfg.cutmix if use_cutmix else cfg.mixup
    lam = _beta(alpha, generator)
    partner = images.flip(0)
    if use_cutmix:
        h, w = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = round(h * cut), round(w * cut)
        cy = int(torch.randint(0, h, (), generator=generator))
        cx = int(torch.randint(0, w, (), generator=generator))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        images = images * lam + partner * (1.0 - lam)
    return images, onehot * lam + onehot.flip(0) * (1.0 - lam)


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha) determined by ``generator`` (torch's ``Beta.sample`` takes no generator)."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


# --- one step ------------------------------------------------------------------------------------------------------


@dataclass
class StepContext:
    """The numerics of a step, resolved once per run (see :func:`step_context`)."""

    device: torch.device
    precision: str
    scaler: torch.amp.GradScaler
    label_smoothing: float = 0.0
    aux_weight: float = 0.3
    grad_clip: float = 0.0
    memory_format: torch.memory_format = torch.channels_last
    tta_flip: bool = False
    autocast_cache: bool = True  # False inside a captured CUDA graph (GraphedStep)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device, self.autocast_cache)

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the model's memory format. The data path hands out channels_last batches, and convolutions
        follow their input's layout, so ``--no-channels-last`` needs its batches made NCHW here (a no-op otherwise)."""
        return images.contiguous(memory_format=self.memory_format) if images.dim() == 4 else images


def step_context(cfg: TrainConfig, device: torch.device) -> StepContext:
    """Resolve precision and scaler for ``cfg`` on ``device``."""
    precision = resolve_precision(cfg, device)
    memory_format = torch.channels_last if use_channels_last(cfg, device) else torch.contiguous_format
    return StepContext(
        device,
        precision,
        make_scaler(precision, device),
        cfg.label_smoothing,
        cfg.aux_weight,
        cfg.grad_clip,
        memory_format,
        cfg.tta_flip,
    )


def compute_loss(
    output: torch.Tensor | tuple, targets: torch.Tensor, ctx: StepContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, main logits). ``output`` is logits or a tuple (logits, aux...) from a net with auxiliary heads;
    ``targets`` are class indices (N,) or class probabilities (N, K) (mixup/cutmix)."""
    if isinstance(output, (tuple, list)):
        logits, aux = output[0], output[1:]
    else:
        logits, aux = output, ()
    loss = F.cross_entropy(logits.float(), targets, label_smoothing=ctx.label_smoothing)
    for a in aux:  # Szegedy et al. 2015 section 5: auxiliary losses added with weight 0.3
        if a is not None:
            loss = loss + ctx.aux_weight * F.cross_entropy(a.float(), targets, label_smoothing=ctx.label_smoothing)
    return loss, logits


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: torch.Tensor,
    ctx: StepContext,
    *,
    check_finite: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns (loss, main logits), both detached.

    ``check_finite(loss)`` runs before backward (the trainer raises there on a NaN/inf loss so no bad update is
    applied). The learning rate is whatever the optimizer's groups hold (set it with :func:`set_lr`).
    """
    with ctx.autocast():
        output = model(ctx.layout(images))
        loss, logits = compute_loss(output, targets, ctx)
    if check_finite is not None:
        check_finite(loss)
    optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(loss).backward()
    if ctx.grad_clip > 0:
        ctx.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
    ctx.scaler.step(optimizer)
    ctx.scaler.update()
    return loss.detach(), logits.detach()


class GraphedStep:
    """:func:`train_step` captured once as a CUDA graph and replayed: forward, loss, backward, clipping and the
    optimizer update in one launch. Call it as ``graphed(images, targets)`` in place of ``train_step(...)``.

    Why: at CIFAR batch sizes an H100 finishes most kernels faster than Python launches the next one, so the step is
    bound by launch overhead, not arithmetic (measured: an eager bf16 resnet56 step at batch 128 took 26.8 ms on an
    H100, about 29 minutes for the paper's 64k iterations). ``torch.compile(mode="reduce-overhead")`` graphs only the
    model's forward and backward; this also takes the optimizer update and the gradient clipping into the graph.

    What makes a replay do exactly what an eager step does (torch.cuda.graphs docs, "whole-network capture"):

    - static inputs: each batch is copied into the buffers the graph reads. Training batches all have one shape
      (the loaders drop the last partial batch); outputs (loss, logits) are the graph's buffers, valid until the
      next call;
    - the learning rate of every param group becomes a float32 device tensor (a Python float would be baked into
      the graph); fused SGD and AdamW read it on the device. With ``lrs`` (:func:`lr_table`) the step itself fills
      it from the table at its device-side step counter, which it advances, so the loop sets no lr per step
      (:meth:`seek` puts the counter at the run's step once per epoch); without, :func:`set_lr` fills it;
    - with ``ema``, the EMA update (:class:`cnnzoo.train.ema.EMA`: device-side counter, no host branch) runs inside
      the step after the optimizer's update, as the eager loop orders them;
    - with ``labels``, the epoch's running loss/accuracy sums and the first non-finite step (at the counter) are
      accumulated inside the step (:attr:`sums`, :attr:`bad`; :meth:`seek` starts them), so the loop neither adds
      nor checks per step;
    - warm-up: the first ``warmup`` calls are ordinary eager steps on a side stream (real training steps, not
      thrown away), so cudnn's autotuning, torch.compile's compilation and the momentum buffers happen before the
      capture, which records on that same stream (per-stream cuBLAS/cuDNN workspaces already exist);
    - nothing inside synchronises with the host: fp16 (its GradScaler checks for inf on the host) is refused, AdamW
      is built capturable (:func:`make_optimizer`), autocast runs without its weight cache, and the non-finite check
      reads the loss the graph leaves behind, after the replay (so, as on any accelerator, a bad step is detected
      after its update, before anything is saved).

    The augmentation stays outside the graph: its randomness is seeded per batch from Python integers (what makes a
    resumed epoch exact), and it is a handful of kernels per step against the hundreds of the network's step.
    Without CUDA (the CPU tests) the same static-buffer step runs uncaptured, so its logic is tested everywhere.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        ctx: StepContext,
        warmup: int = 3,
        *,
        ema: EMA | None = None,
        lrs: torch.Tensor | None = None,
    ) -> None:
        if ctx.scaler.is_enabled():
            raise CnnzooError(NO_GRAPHED_FP16)
        self.net, self.optimizer, self.warmup = net, optimizer, max(1, warmup)
        self.ctx = dataclasses.replace(ctx, autocast_cache=False)
        self.ema = ema  # updated inside the step, after the optimizer's update (the eager loop's order)
        self.lrs = lrs  # lr_table(): the lr of every step, read at the counter; None: the caller sets the lr
        self.lrs_warmup_end: int | None = None  # the warm-up rule's end step ``lrs`` was filled with (loop.Step)
        # The global step the next call trains, on the device: it indexes ``lrs`` inside the graph and advances there.
        self.counter = torch.zeros((), dtype=torch.long, device=ctx.device)
        # With labels passed: the epoch's running [sum of loss * n, correct] (float64) and the first non-finite
        # step (-1: none), accumulated inside the step, so the loop adds and checks nothing per step.
        self.sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)
        self.bad = torch.full((), -1, dtype=torch.long, device=ctx.device)
        # CUDA: the stream the warm-up runs on and the capture records on (same stream: cuBLAS/cuDNN's per-stream
        # workspaces exist before the capture). Elsewhere None: the step runs uncaptured.
        self.side = torch.cuda.Stream() if ctx.device.type == "cuda" else None
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, targets) the graph reads
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None  # (loss, logits) the graph writes

    def seek(self, step: int, sums: torch.Tensor | None = None) -> None:
        """Start an epoch at global step ``step`` (by the loop, once per epoch; fills and a copy, no host sync): the
        device counter, the running ``sums`` carried on from ``sums`` (the epoch so far; zeros if None) and no
        non-finite step seen."""
        self.counter.fill_(step)
        if sums is None:
            self.sums.zero_()
        else:
            self.sums.copy_(sums)
        self.bad.fill_(-1)

    def __call__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        check_finite: Callable[[torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on (images, targets); with ``labels`` (class indices: the targets are soft under mixup) it also
        accumulates :attr:`sums` and records :attr:`bad`. Pass labels on every call or on none (the graph is fixed)."""
        if self.calls == 0:
            self._device_lr()
        self.calls += 1
        batch = (images, targets) if labels is None else (images, targets, labels)
        if self.calls <= self.warmup:
            return self._warmup_step(batch, check_finite)
        if self.static is None:
            self.static = tuple(t.clone() for t in batch)  # clone keeps channels_last
            if self.side is not None:
                self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the grads in its pool
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, stream=self.side):  # records; the step runs in replay() below
                    self.out = self._step(*self.static)
        else:
            for buffer, t in zip(self.static, batch, strict=True):
                buffer.copy_(t)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.out = self._step(*self.static)
        if check_finite is not None:
            check_finite(self.out[0])
        return self.out

    def _step(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        labels: torch.Tensor | None = None,
        check_finite: Callable[[torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the graph records: the lr from the table, :func:`train_step`, the EMA update, the running sums and
        the non-finite record, the counter's advance."""
        if self.lrs is not None:
            # Clamped: a replay past the table's end (never in the loop) reads the last lr, not out of bounds.
            lr = self.lrs.index_select(0, self.counter.clamp(max=len(self.lrs) - 1).view(1)).view(())
            for group in self.optimizer.param_groups:  # set_lr's lr * lr_scale, rounded to float32 by the copy
                group["lr"].copy_(lr * group.get("lr_scale", 1.0))
        loss, logits = train_step(self.net, self.optimizer, images, targets, self.ctx, check_finite=check_finite)
        if self.ema is not None:
            self.ema.update_parameters()
        if labels is not None:  # the loop's own sums (train_one_epoch), same float64 order
            self.sums += torch.stack([loss.double() * len(labels), (logits.argmax(1) == labels).sum().double()])
            self.bad.copy_(torch.where((self.bad < 0) & ~torch.isfinite(loss), self.counter, self.bad))
        self.counter += 1
        return loss, logits

    def _device_lr(self) -> None:
        """Every group's lr as a float32 tensor on the parameters' device (what the fused kernels read)."""
        for group in self.optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=group["params"][0].device)

    def _warmup_step(
        self, batch: tuple[torch.Tensor, ...], check_finite: Callable[[torch.Tensor], None] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """An eager step; on CUDA on the side stream, which the current stream then waits for."""
        images, targets, *labels = batch
        if self.side is None:
            return self._step(images, targets, *labels, check_finite=check_finite)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side), warnings.catch_warnings():
            # An AdamW built capturable warns once that it steps uncaptured: here it does so on purpose.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            out = self._step(images, targets, *labels, check_finite=check_finite)
        torch.cuda.current_stream().wait_stream(self.side)
        return out


def setup_training(
    model: nn.Module, cfg: TrainConfig, device: torch.device | str | None = None, *, world_size: int = 1
) -> tuple[nn.Module, torch.optim.Optimizer, StepContext]:
    """Make ``model`` ready to train as the trainer trains it: the one set-up path (the trainer and ``cnnzoo compare``
    both call it, so compare times the step the trainer runs). Returns ``(net, optimizer, ctx)``; one step is
    ``train_step(net, optimizer, images, labels, ctx)``.

    In order: ``model`` moved to the device (``cfg.device`` when ``device`` is None) in place, its BN layers made
    SyncBatchNorm under DDP with ``cfg.sync_bn``, channels_last per :func:`use_channels_last`; the optimizer of
    :func:`make_optimizer`; the autocast/scaler of :func:`step_context`; ``net`` is ``model`` wrapped in
    DistributedDataParallel when ``world_size > 1`` (the process group must exist), then ``torch.compile`` if
    ``cfg.compile``. ``model`` itself stays the plain module (what checkpoints and the EMA hold).

    It changes no process-wide flag: run it and the steps inside :func:`backend_settings` for the trainer's threads,
    determinism, cudnn autotuning and TF32, restored when the block ends.
    """
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    model.to(device)  # Module.to moves the parameters in place and returns the module itself
    if world_size > 1 and cfg.sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the BN children in place (a CNN's root is no BN)
    if use_channels_last(cfg, device):
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, device)
    net: nn.Module = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return compile_model(net, cfg), optimizer, step_context(cfg, device)


def compile_model(net: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``torch.compile(net, mode=cfg.compile_mode)`` when ``cfg.compile``, else ``net`` itself."""
    return torch.compile(net, mode=cfg.compile_mode) if cfg.compile else net
