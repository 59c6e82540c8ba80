"""The training configuration: one typed dataclass, built from defaults < recipe < command-line flags.

Recipes are small TOML files shipped in ``cnnzoo/recipes/``: flat ``key = value`` lines naming :class:`TrainConfig`
fields, a top-level ``description``, and optional per-model tables ``[models.NAME]`` whose keys apply only when
training that model (how ``resnet-cifar-paper`` gives ResNet-110 its 400-iteration warm-up at lr 0.01, He et al.
2016 section 4.2). The resolved config is written to the run directory as ``config.toml`` (a tiny writer for flat
scalars and lists; no TOML-writing dependency) and read back with ``tomllib`` on ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cnnzoo.atomic import check_regular, read_regular, write_atomic
from cnnzoo.data.bundle import AUGMENTS, AUTO_AUGMENTS
from cnnzoo.errors import CnnzooError
from cnnzoo.train.schedule import SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("auto", "native-bf16", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
FREEZE = ("backbone",)
MAX_SIDE = 4096  # pixels: the largest --image-size and --cutout (the papers train at 224 to 512)
NO_GRAPHED_FP16 = "--cuda-graph does not support fp16 (its GradScaler checks for inf on the host); use bf16"


def _f(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its ``--flag`` help text (the CLI builds its flags from these)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# What may change when resuming: the length (the lr schedule follows it) and where/how fast it runs.
RESUME_OVERRIDES = (
    "epochs",
    "iterations",
    "device",
    "threads",
    "compile",
    "compile_mode",
    "cuda_graph",
    "data_dir",
    "log_every",
    "label",
)


@dataclass
class TrainConfig:
    """Everything that decides a training run. Units: epochs unless a field says steps (= optimizer updates)."""

    # What to train on.
    model: str = _f("resnet20", "registered model name")
    data: str = _f("digits", "dataset name or image folder")
    data_dir: str | None = _f(None, "where named datasets live (default $CNNZOO_DATA_DIR or ~/.cache/cnnzoo/data)")
    download: bool = _f(False, "download a missing named dataset or --weights file (needs the network)")
    recipe: str | None = _f(None, "recipe the config was built from (informational)")
    label: str | None = _f(None, "this run's name on charts: curves.png, `cnnzoo curves` (default: the run folder's)")
    image_size: int | None = _f(None, "input side in pixels (default: the dataset's)")
    in_channels: int | None = _f(None, "input channels (default: the dataset's)")
    val_size: float | None = _f(
        None,
        "validation images carved from train: a count (>=1) or a fraction (<1) (default: CIFAR 5,000, else a tenth)",
    )
    subset: int | None = _f(None, "train on only this many training images (quick experiments; default: all)")
    augment: str = _f(
        "standard",
        "training augmentation; alexnet | vgg | googlenet | resnet: the papers' (image folders)",
        choices=AUGMENTS,
    )
    cutout: int = _f(0, "cutout square side in pixels, 0 = off")
    auto_augment: str | None = _f(
        None, "image folders: torchvision reference's policy after crop and flip, per image", choices=AUTO_AUGMENTS
    )
    random_erase: float = _f(0.0, "image folders: random erasing probability per image (torchvision reference)")
    # How long.
    epochs: int = _f(30, "epochs to train (ignored when --iterations > 0)")
    iterations: int = _f(0, "train for exactly this many steps (the papers' unit), 0 = use --epochs")
    batch_size: int = _f(128, "global batch size (split across DDP ranks)")
    eval_batch_size: int | None = _f(None, "evaluation batch size (default: 2 x batch size)")
    # Optimiser.
    optimizer: str = _f("sgd", "sgd | adamw", choices=OPTIMIZERS)
    lr: float = _f(0.1, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum (AdamW: beta1)")
    nesterov: bool = _f(False, "Nesterov momentum (SGD)")
    weight_decay: float = _f(5e-4, "weight decay (L2 for SGD, decoupled for AdamW)")
    wd_exclude_bn_bias: bool = _f(True, "exempt BN and bias parameters (1-d tensors) from weight decay")
    grad_clip: float = _f(0.0, "clip the global gradient norm to this, 0 = off")
    # Learning-rate schedule: lr_at(step) in cnnzoo.train.schedule.
    schedule: str = _f("cosine", " | ".join(SCHEDULES), choices=SCHEDULES)
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs")
    warmup_steps: int = _f(0, "warm-up length in steps (wins over --warmup-epochs)")
    warmup_lr: float = _f(0.0, "constant lr during warm-up instead of a linear ramp from 0, 0 = ramp")
    warmup_until_error: float = _f(
        0.0,
        "end the warm-up (at --warmup-lr) at the first step where the training error of the last 20 batches is "
        "below this fraction, He et al. 2016 sec. 4.2: 0.8; --warmup-steps/--warmup-epochs, if given, cap it; 0 = off",
    )
    milestones: list[float] = _f([], "multistep: epochs at which lr is multiplied by gamma")
    milestone_steps: list[int] = _f([], "multistep: steps at which lr is multiplied by gamma (wins)")
    step_size: float = _f(30.0, "step: multiply lr by gamma every this many epochs")
    gamma: float = _f(0.1, "step/multistep decay factor")
    min_lr: float = _f(0.0, "cosine/linear: final learning rate")
    pct_start: float = _f(0.25, "onecycle: fraction of training spent rising")
    # Regularisation.
    label_smoothing: float = _f(0.0, "label smoothing epsilon")
    mixup: float = _f(0.0, "mixup Beta(alpha, alpha), 0 = off")
    cutmix: float = _f(0.0, "cutmix Beta(alpha, alpha), 0 = off (both on: one of the two per batch)")
    dropout: float | None = _f(None, "override the p of every nn.Dropout in the model")
    zero_init_residual: bool = _f(False, "zero the last BN weight of each residual branch (Goyal et al. 2017)")
    aux_weight: float = _f(0.3, "weight of each auxiliary classifier's loss (GoogLeNet, Szegedy et al. 2015)")
    aux_logits: bool | None = _f(None, "GoogLeNet: train with the auxiliary classifiers (default: the model's own)")
    tta_flip: bool = _f(False, "evaluate on each image and its mirror image, logits averaged (validation and test)")
    ema: float = _f(0.0, "EMA decay of the weights per step (e.g. 0.999), evaluated alongside, 0 = off")
    # Evaluation and logging.
    eval_every: int = _f(1, "validate every N epochs (and always after the last); the best is chosen among these")
    early_stop: int = _f(0, "stop when validation top-1 has not improved for this many validated epochs, 0 = off")
    log_every: int = _f(10, "TensorBoard: log the training loss, lr and images/s every this many steps")
    # Starting weights and fine-tuning (cnnzoo.models.weights, cnnzoo.train.finetune).
    weights: str | None = _f(
        None,
        "start from these weights: a torchvision name (DEFAULT, IMAGENET1K_V1, ResNet50_Weights.IMAGENET1K_V2), a "
        ".pth/.pt state_dict file or a cnnzoo run directory; a torchvision file missing from "
        "$TORCH_HOME/hub/checkpoints needs --download",
    )
    weights_sha256: str | None = _f(
        None, "SHA-256 of the --weights file: recorded by the run; given, another file is refused"
    )
    freeze: str | None = _f(
        None, "backbone: train only the classifier (a linear probe); frozen BN stays in eval mode", choices=FREEZE
    )
    freeze_until: str | None = _f(
        None, "keep every layer up to and including this stage fixed (ResNet: maxpool, layer1..layer4)"
    )
    backbone_lr_scale: float = _f(1.0, "the layers outside the classifier learn at this factor times the scheduled lr")
    mean: list[float] = _f([], "normalisation mean per channel (default: the --weights', else the data's own)")
    std: list[float] = _f([], "normalisation std per channel (default: the --weights', else the data's own)")
    transform_input: bool | None = _f(
        None, "GoogLeNet: rescale ImageNet-normalised input to [-1, 1] (default: on with torchvision's weights)"
    )
    # Speed and reproducibility.
    device: str = _f("auto", "auto | cpu | cuda | cuda:N | mps")
    precision: str = _f(
        "auto",
        "auto (bf16 on CUDA, fp32 elsewhere) | native-bf16 (bf16 on CUDA and on CPUs with AMX bf16 units, where it is "
        "faster; fp32 elsewhere, where emulated bf16 is 10x slower) | fp32 | bf16 | fp16",
        choices=PRECISIONS,
    )
    channels_last: bool | None = _f(None, "channels_last memory format (default: on for CUDA and the CPU)")
    compile: bool = _f(False, "torch.compile the model")
    compile_mode: str = _f(
        "default",
        "torch.compile mode; reduce-overhead replays CUDA graphs (less launch overhead)",
        choices=COMPILE_MODES,
    )
    fused: bool | None = _f(None, "fused optimizer kernels (default: on for CUDA)")
    cuda_graph: bool = _f(
        False,
        "capture the whole training step (forward, backward, optimizer) as one CUDA graph "
        "and replay it: less launch overhead at small batches (one CUDA device)",
    )
    sync_bn: bool = _f(False, "DDP: SyncBatchNorm across ranks")
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact resume on the CPU)")
    seed: int = _f(0, "seed for initialisation, data order, augmentation, mixup")
    threads: int = _f(0, "CPU threads for torch (0 = torch's default)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`CnnzooError` on a value no run could use, so every argument is refused before any work."""
        from cnnzoo.models import get_model_info

        for name in FIELDS:  # each value of its field's type (the Python API may pass anything), nan/inf refused
            setattr(self, name, _coerce(name, getattr(self, name)))
        get_model_info(self.model)  # an unknown model name, with close matches
        for check in CHECKS:
            message = check(self)
            if message is not None:
                raise CnnzooError(message)
        self._check_upper_bounds()

    def _check_upper_bounds(self) -> None:
        """Upper bounds: a value that passes :data:`CHECKS` but would overflow later (a float power, a float
        turned into an int, a tensor allocated from it, a seed torch refuses) is refused here, in one line."""
        bounds = [
            ("seed", self.seed, 2**63 - 1),
            ("epochs", self.epochs, 10**6),
            ("iterations", self.iterations, 10**9),
            ("batch_size", self.batch_size, 2**20),
            ("eval_batch_size", self.eval_batch_size, 2**20),
            ("image_size", self.image_size, MAX_SIDE),
            ("cutout", self.cutout, MAX_SIDE),
            ("subset", self.subset, 2**40),
            ("val_size", self.val_size, 2**40),
            ("threads", self.threads, 4096),
            ("eval_every", self.eval_every, 10**6),
            ("early_stop", self.early_stop, 10**6),
            ("log_every", self.log_every, 10**9),
            ("lr", self.lr, 1e30),
            ("warmup_lr", self.warmup_lr, 1e30),
            ("warmup_epochs", self.warmup_epochs, 10**6),
            ("warmup_steps", self.warmup_steps, 10**9),
            ("step_size", self.step_size, 10**6),
            ("gamma", self.gamma, 1.0),  # a decay factor: above 1, gamma ** k overflows a float on a long run
            ("weight_decay", self.weight_decay, 1e3),
            ("grad_clip", self.grad_clip, 1e30),
            ("mixup", self.mixup, 1e3),
            ("cutmix", self.cutmix, 1e3),
            ("aux_weight", self.aux_weight, 1e3),
            ("backbone_lr_scale", self.backbone_lr_scale, 1e3),
            ("milestones", max(self.milestones, default=0), 10**6),
            ("milestone_steps", max(self.milestone_steps, default=0), 10**9),
            ("mean", max((abs(v) for v in self.mean), default=0), 1e3),
            ("std", max(self.std, default=0), 1e3),
        ]
        for name, value, most in bounds:
            if value is not None and value > most:
                raise CnnzooError(f"{name} must be at most {most:g}, got {value:g}")
        if self.step_size < 1e-6:
            raise CnnzooError(f"step_size must be at least 1e-06 epochs, got {self.step_size:g}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (what checkpoints store: no pickled classes)."""
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


# --- validation ----------------------------------------------------------------------------------------------------

# A check takes a config and returns why it is refused (one line), or None when it passes.
Check = Callable[[TrainConfig], str | None]


def _field(name: str, ok: Callable[[Any], bool], message: str) -> Check:
    """The check of one field: ``message`` with the value in place of its ``{}`` (``{!r}``) unless ``ok(value)``."""

    def check(cfg: TrainConfig) -> str | None:
        value = getattr(cfg, name)
        return None if ok(value) else message.format(value)

    return check


def _choice(name: str, choices) -> Check:
    """``name`` is one of ``choices`` (or None: ``_coerce`` has already refused None where a field needs a value)."""
    return _field(name, lambda v: v is None or v in choices, f"{name} must be one of {', '.join(choices)}, got {{!r}}")


def _at_least(name: str, low: int) -> Check:
    """``name`` is ``low`` or more (or None: the default chosen later)."""
    return _field(name, lambda v: v is None or v >= low, f"{name} must be >= {low}, got {{}}")


def _positive(name: str) -> Check:
    return _field(name, lambda v: v > 0, f"{name} must be > 0, got {{}}")


def _fraction(name: str, message: str) -> Check:
    """``name`` is in [0, 1) (or None)."""
    return _field(name, lambda v: v is None or 0 <= v < 1, message)


def _a_length(cfg: TrainConfig) -> str | None:
    return None if cfg.epochs >= 1 or cfg.iterations >= 1 else "need epochs >= 1 or iterations >= 1"


def _early_stop_validates(cfg: TrainConfig) -> str | None:
    if cfg.early_stop and cfg.val_size == 0:
        return "--early-stop needs a validation split: drop --val-size 0 or --early-stop"
    return None


def _nesterov(cfg: TrainConfig) -> str | None:
    ok = not cfg.nesterov or (cfg.optimizer == "sgd" and cfg.momentum > 0)
    return None if ok else "nesterov needs SGD with momentum > 0"


def _min_lr(cfg: TrainConfig) -> str | None:
    return None if 0 <= cfg.min_lr <= cfg.lr else f"min_lr must be in [0, lr={cfg.lr}], got {cfg.min_lr}"


def _warmup_rule(cfg: TrainConfig) -> str | None:
    """He et al.'s rule warms up at a constant lr, which one-cycle (its own rise) has no place for."""
    if not cfg.warmup_until_error or (cfg.warmup_lr > 0 and cfg.schedule != "onecycle"):
        return None
    return (
        "--warmup-until-error warms up at a constant --warmup-lr (> 0, e.g. 0.01 as He et al.) and needs a "
        "schedule other than onecycle"
    )


def _milestones(cfg: TrainConfig) -> str | None:
    ok = all(m >= 0 for m in cfg.milestones) and all(m >= 0 for m in cfg.milestone_steps)
    return None if ok else "milestones must be >= 0"


def _mix_alphas(cfg: TrainConfig) -> str | None:
    return None if cfg.mixup >= 0 and cfg.cutmix >= 0 else "mixup and cutmix alphas must be >= 0"


def _warmup_lengths(cfg: TrainConfig) -> str | None:
    return None if cfg.warmup_epochs >= 0 and cfg.warmup_steps >= 0 else "warm-up lengths must be >= 0"


def _graph_precision(cfg: TrainConfig) -> str | None:
    return NO_GRAPHED_FP16 if cfg.cuda_graph and cfg.precision == "fp16" else None


def _graph_compile_mode(cfg: TrainConfig) -> str | None:
    if not (cfg.cuda_graph and cfg.compile and cfg.compile_mode in ("reduce-overhead", "max-autotune")):
        return None
    return (
        f"--cuda-graph captures the step itself: use it with --compile-mode default or "
        f"max-autotune-no-cudagraphs, not {cfg.compile_mode} (which makes CUDA graphs of its own)"
    )


def _graph_fused(cfg: TrainConfig) -> str | None:
    if not (cfg.cuda_graph and cfg.fused is False):
        return None
    return "--cuda-graph needs the fused optimizer (the unfused one reads a tensor lr on the host): drop --no-fused"


def _freeze_once(cfg: TrainConfig) -> str | None:
    return "give --freeze or --freeze-until, not both" if cfg.freeze and cfg.freeze_until else None


def _mean_std(cfg: TrainConfig) -> str | None:
    if len(cfg.mean) == len(cfg.std) and all(s > 0 for s in cfg.std):
        return None
    return f"mean and std need one value per channel each, std > 0; got {cfg.mean} and {cfg.std}"


def _sha256(value: str | None) -> bool:
    return value is None or (len(value) == 64 and all(c in "0123456789abcdef" for c in value))


# Every check :meth:`TrainConfig.validate` makes after the type coercion, in order: the first refusal is the message.
CHECKS: tuple[Check, ...] = (
    _choice("optimizer", OPTIMIZERS),
    _choice("schedule", SCHEDULES),
    _choice("precision", PRECISIONS),
    _choice("compile_mode", COMPILE_MODES),
    _choice("augment", AUGMENTS),
    _at_least("epochs", 0),
    _a_length,
    _at_least("iterations", 0),
    _at_least("batch_size", 1),
    _at_least("eval_batch_size", 1),
    _at_least("image_size", 1),
    _field("in_channels", lambda v: v in (None, 1, 3), "in_channels must be 1 or 3, got {}"),
    _at_least("val_size", 0),
    _field(
        "val_size",
        lambda v: v is None or v < 1 or float(v).is_integer(),
        "val_size must be a count of images (>= 1) or a fraction (< 1), got {}",
    ),
    _at_least("subset", 1),
    _at_least("cutout", 0),
    _at_least("eval_every", 1),
    _at_least("early_stop", 0),
    _at_least("log_every", 1),
    _early_stop_validates,
    _at_least("seed", 0),
    _at_least("threads", 0),
    _field("lr", lambda v: v > 0, "lr must be a positive number, got {}"),
    _fraction("momentum", "momentum must be in [0, 1) (SGD momentum, AdamW beta1), got {}"),
    _nesterov,
    _positive("gamma"),
    _min_lr,
    _at_least("warmup_lr", 0),
    _fraction("warmup_until_error", "warmup_until_error must be a training error in [0, 1), got {}"),
    _warmup_rule,
    _milestones,
    _at_least("aux_weight", 0),
    _at_least("weight_decay", 0),
    _fraction("label_smoothing", "label_smoothing must be in [0, 1), got {}"),
    _mix_alphas,
    _fraction("ema", "ema decay must be in [0, 1), got {}"),
    _at_least("grad_clip", 0),
    _fraction("dropout", "dropout must be in [0, 1), got {}"),
    _warmup_lengths,
    _field("pct_start", lambda v: 0 < v < 1, "pct_start must be in (0, 1), got {}"),
    _positive("step_size"),
    _graph_precision,
    _graph_compile_mode,
    _choice("auto_augment", AUTO_AUGMENTS),
    _field("random_erase", lambda v: 0 <= v <= 1, "random_erase must be a probability in [0, 1], got {}"),
    _choice("freeze", FREEZE),
    _freeze_once,
    _field(
        "backbone_lr_scale",
        lambda v: v >= 0 and math.isfinite(v),
        "backbone_lr_scale must be a number >= 0, got {}",
    ),
    _mean_std,
    _field("weights_sha256", _sha256, "weights_sha256 must be 64 lowercase hex digits, got {!r}"),
    _graph_fused,
)


def _coerce(name: str, value: Any) -> Any:
    """Check a TOML / keyword value against the field's type; ints are accepted where floats are expected."""
    kind = FIELDS[name].type
    if value is None:
        if "None" in kind:
            return None
        raise CnnzooError(f"{name} cannot be empty")
    base = kind.replace(" | None", "")
    if base.startswith("list"):
        items = value if isinstance(value, (list, tuple)) else [value]
        item = int if "int" in base else float
        if not all(_finite_number(v) and (item is float or float(v).is_integer()) for v in items):
            kind = "integers" if item is int else "numbers"
            raise CnnzooError(f"{name} must be a list of finite {kind}, got {value!r}")
        return [item(v) for v in items]
    if base == "bool":
        if not isinstance(value, bool):
            raise CnnzooError(f"{name} must be true or false, got {value!r}")
        return value
    if base in ("int", "float"):
        if not _finite_number(value):  # nan and inf are never a setting (TOML and float() both accept them)
            raise CnnzooError(f"{name} must be a finite number, got {value!r}")
        if base == "int" and not float(value).is_integer():
            raise CnnzooError(f"{name} must be an integer, got {value!r}")
        return int(value) if base == "int" else float(value)
    if not isinstance(value, str):
        raise CnnzooError(f"{name} must be a string, got {value!r}")
    return value


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(keys, where: str) -> None:
    unknown = sorted(set(keys) - set(FIELDS))
    if unknown:
        raise CnnzooError(f"unknown training option(s) in {where}: {', '.join(unknown)}")


# --- recipes -------------------------------------------------------------------------------------------------------


def recipes_dir() -> Path:
    """The folder of the shipped recipe TOML files."""
    return Path(str(resources.files("cnnzoo") / "recipes"))


def list_recipes() -> dict[str, str]:
    """Shipped recipe names -> their one-line descriptions."""
    return {p.stem: read_recipe(p.stem).get("description", "") for p in sorted(recipes_dir().glob("*.toml"))}


MAX_TOML_BYTES = 1 << 20  # a recipe or config.toml is a few hundred bytes; anything near this is not one


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed TOML file ``path`` (a ``what``: "recipe", "run config"); anything that is not a small UTF-8 TOML
    file (a folder, a huge or binary file, invalid TOML) is a one-line :class:`CnnzooError` naming it."""
    if path.is_dir():
        raise CnnzooError(f"{path}: is a folder, not a {what} file (TOML)")
    check_regular(path, f"{what} file (TOML)")
    try:
        size = path.stat().st_size
        if size > MAX_TOML_BYTES:
            raise CnnzooError(f"{path}: {size:,} bytes, too large for a {what} file (at most {MAX_TOML_BYTES:,})")
        text = read_regular(path, MAX_TOML_BYTES, f"{what} file (TOML)").decode("utf-8")
    except UnicodeDecodeError as e:
        raise CnnzooError(f"{path}: not UTF-8 text (byte {e.start}); a {what} file is TOML") from None
    except OSError as e:
        raise CnnzooError(f"{path}: cannot read the {what} file ({e.strerror or e})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CnnzooError(f"{path}: invalid TOML: {str(e).splitlines()[0]}") from None


def read_recipe(name: str) -> dict[str, Any]:
    """The parsed TOML of a shipped recipe, or of a ``.toml`` file path."""
    if name.endswith(".toml"):
        path = Path(name).expanduser()
        if not path.exists():
            raise CnnzooError(f"{path}: no such recipe file")
        return read_toml(path, "recipe")
    path = recipes_dir() / f"{name}.toml"
    if "/" in name or not path.is_file():
        names = ", ".join(p.stem for p in sorted(recipes_dir().glob("*.toml")))
        raise CnnzooError(f"unknown recipe {name!r}; recipes: {names} (or the path of a .toml file)")
    return read_toml(path, "recipe")


def recipe_values(name: str, model: str) -> dict[str, Any]:
    """The config values a recipe sets for ``model``: its flat keys, then its ``[models.<model>]`` table, each
    checked against its field's type (an error names the recipe)."""
    raw = read_recipe(name)
    per_model = raw.pop("models", {})
    description = raw.pop("description", "")
    if not isinstance(description, str):
        raise CnnzooError(f"recipe {name!r}: description must be a string, got {description!r}")
    if not isinstance(per_model, dict) or not all(isinstance(t, dict) for t in per_model.values()):
        raise CnnzooError(f"recipe {name!r}: models must hold tables [models.NAME] of options")
    _check_keys(raw, f"recipe {name!r}")
    values = dict(raw)
    for model_name, table in per_model.items():
        _check_keys(table, f"recipe {name!r} [models.{model_name}]")
        if model_name == model:
            values.update(table)
    try:
        return {k: _coerce(k, v) for k, v in values.items()}
    except CnnzooError as e:
        raise CnnzooError(f"recipe {name!r}: {e}") from None


def build_config(
    model: str | None = None, data: str | None = None, *, recipe: str | None = None, **overrides: Any
) -> TrainConfig:
    """Resolve a config: dataclass defaults < ``recipe`` (and its table for ``model``) < ``overrides``.

    ``overrides`` are :class:`TrainConfig` field names; ``None`` means "not given" (keeps the recipe's value).
    """
    _check_keys(overrides, "the arguments")
    given = {k: v for k, v in overrides.items() if v is not None}
    if model is not None:
        given["model"] = model
    if data is not None:
        given["data"] = data
    values: dict[str, Any] = {}
    if recipe is not None:
        values.update(recipe_values(recipe, given.get("model", FIELDS["model"].default)))
        values["recipe"] = recipe
    from_recipe = dict(values)
    values.update(given)
    try:
        return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    except CnnzooError as e:
        if recipe is not None and _refuses(from_recipe, str(e)):  # the recipe's own value: say which recipe
            raise CnnzooError(f"recipe {recipe!r}: {e}") from None
        raise


def _refuses(values: dict[str, Any], message: str) -> bool:
    """Whether ``values`` alone (on the defaults) are refused with ``message``."""
    try:
        TrainConfig(**values)
    except CnnzooError as e:
        return str(e) == message
    return False


# --- config.toml ---------------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(values: dict[str, Any]) -> str:
    """Flat ``key = value`` TOML for scalars and lists; ``None`` values are left out (TOML has no null)."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v is not None)


def write_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as ``config.toml``."""
    write_atomic(path, "# cnnzoo training config (resolved: defaults < recipe < flags)\n" + to_toml(cfg.to_dict()))


def read_config(path: str | Path) -> TrainConfig:
    """Read a ``config.toml`` written by :func:`write_config`."""
    path = Path(path)
    if not path.exists():
        raise CnnzooError(f"{path}: no such file (not a cnnzoo run directory?)")
    values = read_toml(path, "run config")
    _check_keys(values, str(path))
    try:
        return config_from_dict(values)
    except CnnzooError as e:
        raise CnnzooError(f"{path}: {e}") from None


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a plain dict (checkpoint or TOML), type-checked."""
    _check_keys(values, "the stored config")
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
