"""One model measured in its own spawned process, kept alive so that its timed repetitions interleave with the other
models' (and with torchvision's same architecture).

Why a process per model: on the CPU the memory figure is the growth of the process's peak resident set
(``ru_maxrss``), which never goes down, so it belongs to one model only in a process of its own; on CUDA each process
has its own allocator and peak counter. Why kept alive: a repetition of every model per round, models alternated,
lets every model see the same machine load, so a burst of load from elsewhere widens every model's spread instead of
slowing one model's figures alone.

The parent sends ``("round", index)`` and receives one time per figure; ``("stop", None)`` ends the process. The
child ignores SIGINT: a Ctrl-C reaches the whole process group, and the parent decides what is kept.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from cnnzoo.errors import CnnzooError

TORCHVISION = {"alexnet", "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} | {
    f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")
}


def peak_mb(device: torch.device) -> float:
    """The allocator's peak on CUDA; the process's peak resident set on the CPU (MiB)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


MIN_TIMED = 0.05  # seconds: a call shorter than this is repeated within one timing (a 3 ms call alone is noise)


def timed(fn, device: torch.device, min_seconds: float = MIN_TIMED) -> float:
    """Seconds per call of ``fn``: called until ``min_seconds`` have passed (at least once), the device synchronised
    before and after; the mean of those calls. One call of a few milliseconds on a 2-core CPU is at the mercy of a
    thread's wake-up or a timer interrupt (spreads of 30-45 % at batch 1 in one call); 50 ms of calls is not."""
    from cnnzoo.train.engine import sync

    sync(device)
    calls, t0 = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - t0 < min_seconds:  # on CUDA the host runs ahead: the sync below waits
        fn()
        calls += 1
    sync(device)
    return (time.perf_counter() - t0) / calls


def timers(model: torch.nn.Module, cfg, shape, batch: int, device: torch.device, num_classes: int):
    """Closures for one inference at batch 1, one at ``batch``, and one training step at ``batch``, set up by the
    trainer's own :func:`~cnnzoo.train.engine.setup_training` for ``cfg``."""
    import torch

    from cnnzoo.train.engine import setup_training, train_step

    net, optimizer, ctx = setup_training(model, cfg, device)
    x1 = ctx.layout(torch.randn(1, *shape, device=device))  # in the model's layout, as the data path hands it over
    xb = ctx.layout(torch.randn(batch, *shape, device=device))
    yb = torch.randint(0, num_classes, (batch,), device=device)

    def infer(x):
        def run():
            net.eval()
            with torch.no_grad(), ctx.autocast():
                net(x)

        return run

    def step():
        net.train()
        train_step(net, optimizer, xb, yb, ctx)

    return infer(x1), infer(xb), step


class Session:
    """A model (and torchvision's twin, when asked) set up, warmed up, its memory measured; :meth:`round` times it.

    Timed as the trainer runs: its ``fast`` recipe's step, under the trainer's process-wide backend flags.
    """

    def __init__(self, name, cfg, shape, batch, device, vs_torchvision, num_classes) -> None:
        import torch

        from cnnzoo.models import create_model

        self.device, self.cfg = device, cfg
        torch.manual_seed(0)
        model = create_model(name, num_classes=num_classes).to(device)
        base = peak_mb(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device) / 2**20
        self.mine = timers(model, self.cfg, shape, batch, device, num_classes)
        one, many, step = self.mine
        for fn in (one, many, one, many):  # warm-up (and cudnn autotuning); inference memory before training's
            fn()
        self.ready: dict[str, Any] = {"infer_mem_mb": peak_mb(device) - base}
        step()
        step()
        self.ready["train_mem_mb"] = peak_mb(device) - base
        self.theirs = None
        if vs_torchvision and name in TORCHVISION:
            import torchvision

            kw = {"init_weights": True} if name == "googlenet" else {}
            tv = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kw).to(device)
            self.theirs = timers(tv, self.cfg, shape, batch, device, num_classes)
            for fn in self.theirs:
                fn()
                fn()

    def round(self, index: int) -> dict[str, float]:
        """One time (seconds) per figure: ``latency``, ``infer``, ``train`` (and ``tv_*`` for torchvision's model),
        ours first in even rounds and theirs first in odd ones, so neither always runs right after the other."""
        sides = [("", self.mine)] + ([("tv_", self.theirs)] if self.theirs else [])
        if index % 2:
            sides.reverse()
        out = {}
        for prefix, (one, many, step) in sides:
            out[prefix + "latency"] = timed(one, self.device)
            out[prefix + "infer"] = timed(many, self.device)
            out[prefix + "train"] = timed(step, self.device)
        return out


def serve(conn, args: tuple) -> None:
    """The child process: build a :class:`Session`, report it ready (or why not), then answer rounds until stopped."""
    import torch

    from cnnzoo.train.config import build_config
    from cnnzoo.train.engine import backend_settings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name, shape, batch, device_name, vs_tv, classes = args
    device = torch.device(device_name)
    cfg = build_config(recipe="fast", device=str(device))
    with backend_settings(cfg, device):
        try:
            session = Session(name, cfg, shape, batch, device, vs_tv, classes)
        except torch.OutOfMemoryError:
            conn.send({"oom": True})
            return
        except CnnzooError as e:  # e.g. an input size the net cannot take
            conn.send({"error": str(e)})
            return
        except RuntimeError as e:
            conn.send({"oom": True} if "out of memory" in str(e).lower() else {"error": str(e).splitlines()[0]})
            return
        conn.send(session.ready)
        while True:
            try:
                what, index = conn.recv()
            except EOFError:  # the parent is gone
                return
            if what == "stop":
                return
            conn.send(session.round(index))


class Worker:
    """The parent's handle on one model's process: :attr:`ready` (memory, or ``oom`` / ``error``), :meth:`round`."""

    def __init__(self, args: tuple) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, args), daemon=True)
        self.process.start()
        child.close()
        try:
            self.ready: dict[str, Any] = self._receive()
        except BaseException:  # Ctrl-C while it sets up: no process left behind
            self.process.terminate()
            self.process.join(timeout=5)
            raise

    def _receive(self) -> dict:
        try:
            return self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            return {"error": f"the measuring process ended (exit status {self.process.exitcode})"}

    def round(self, index: int) -> dict[str, float]:
        """One repetition of every figure (see :meth:`Session.round`)."""
        try:
            self.conn.send(("round", index))
        except OSError:  # the process is gone
            self.process.join(timeout=5)
            return {"error": f"the measuring process ended (exit status {self.process.exitcode})"}
        return self._receive()

    def close(self) -> None:
        """End the process (asked first, then terminated)."""
        with contextlib.suppress(OSError):  # already gone
            self.conn.send(("stop", None))
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.conn.close()
