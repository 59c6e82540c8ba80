"""What stops a run: a signal or a step budget (:class:`StopFlag`, cleanly, after the current step) and a non-finite
loss (:class:`FiniteGuard`, at once, before anything is saved)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from cnnzoo.errors import CnnzooError
from cnnzoo.train.distributed import Dist

if TYPE_CHECKING:
    from cnnzoo.train.state import RunState

FINITE_EVERY = 50  # steps between NaN/inf checks on an accelerator


class NonFiniteLoss(CnnzooError):
    """The loss became NaN or infinite: the run stops, keeping the last good checkpoint."""

    exit_code = 3


class StopFlag:
    """Set by SIGINT/SIGTERM (or a step budget); the loop stops cleanly after the current step.

    ``signum`` is the signal that stopped the run (None for ``stop_after``): the CLI exits with 128 + it.
    """

    def __init__(self, stop_after: int | None = None) -> None:
        self.requested = False
        self.stop_after = stop_after
        self.reason = ""
        self.signum: int | None = None

    def check(self, step: int, dist: Dist) -> bool:
        """Whether to stop after ``step`` steps; under DDP every rank answers the same."""
        if self.stop_after is not None and step >= self.stop_after and not self.requested:
            self.requested, self.reason = True, f"stopped after step {step} (--stop-after)"
        if dist.world_size > 1:  # every rank must stop at the same step: [ranks stopping, sum of their signals]
            flags = dist.all_reduce(torch.tensor([float(self.requested), float(self.signum or 0)]))
            if flags[0] > 0 and not self.requested:
                self.requested, self.reason = True, "stopped with the other processes"
                self.signum = int(flags[1] / flags[0]) or None
        return self.requested

    def install(self) -> Callable[[], None]:
        """Catch SIGINT/SIGTERM (main thread only); a second Ctrl-C aborts at once. Returns the uninstaller."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested, self.reason = True, f"{signal.Signals(signum).name} received"
            self.signum = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(s, h) for s, h in old.items()]


class FiniteGuard:
    """Stops the run at the first NaN/inf loss, before anything is saved: ``guard(loss)`` is the step's
    ``check_finite`` hook, :meth:`raise_if_bad` raises :class:`NonFiniteLoss` if a bad step was seen.

    On the CPU every loss is checked before its backward, so a bad update is never applied. On an accelerator a
    per-step check would stall the device, so the first bad step is recorded on the device and read every
    ``FINITE_EVERY`` steps and at the end of the epoch.
    """

    def __init__(self, run: RunState) -> None:
        self.run = run
        self.bad = torch.full((), -1, dtype=torch.long, device=run.ctx.device)  # first non-finite step, -1 = none
        self.every_step = run.ctx.device.type == "cpu"

    def __call__(self, loss: torch.Tensor) -> None:
        self.bad.masked_fill_((self.bad < 0) & ~torch.isfinite(loss), self.run.step)
        if self.every_step:
            self.raise_if_bad()

    def raise_if_bad(self) -> None:
        step = int(self.bad.item())
        if step >= 0:
            spe, run_dir = self.run.steps_per_epoch, self.run.run_dir
            last = run_dir / "last.pt" if run_dir and (run_dir / "last.pt").is_file() else "none written"
            raise NonFiniteLoss(
                f"non-finite loss at epoch {step // spe + 1}, step {step + 1}; stopped, keeping the last good "
                f"checkpoint ({last}); try a lower --lr, --grad-clip or --precision fp32"
            )
