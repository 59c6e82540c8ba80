"""What ``compare`` and its ``--sweep`` and ``--train-budget`` modes share: the default nets, the interruption, the
progress log and the accuracies of ``--runs`` (a module of its own, so the modes need not import the command's
package, which imports them)."""

from __future__ import annotations

import sys
from pathlib import Path

from cnnzoo.errors import CnnzooError

DEFAULT_224 = ["alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "resnet152"]
DEFAULT_32 = ["alexnet_cifar", "vgg16_cifar", "googlenet_cifar", "resnet18_cifar", "resnet20", "resnet56"]


class CompareInterrupted(CnnzooError):
    """Ctrl-C while measuring: what was measured is written."""

    exit_code = 130


def _log(message: str) -> None:
    """Progress on stderr, flushed, so that it reaches a piped log as it happens."""
    print(message, file=sys.stderr, flush=True)


def runs_accuracy(run_dirs: list[str], label: str | None = None) -> list[dict]:
    """One entry per run directory (or report.json named directly): ``{"model", "run", "accuracy", "data"}``.

    ``run`` labels the run in the table and chart: its directory's name, or as many trailing path parts as it takes
    to tell runs with the same name apart (``a/resnet20``, ``b/resnet20``). Two runs of one model both stay.
    """
    from cnnzoo.train.tools import read_report

    found = []
    for run in run_dirs:
        path = Path(run) / "report.json" if Path(run).is_dir() else Path(run)
        report = read_report(path)  # checked: model, data, test.top1
        found.append(
            {
                "model": report["model"],
                "accuracy": report["test"]["top1"],
                "data": label or Path(report["data"]).name,
                "dir": path.resolve().parent,
            }
        )
    dirs = [e.pop("dir").parts for e in found]
    for entry, parts in zip(found, dirs, strict=True):
        depth = 1  # enough trailing parts that no other run's directory ends the same way
        while depth < len(parts) and sum(d[-depth:] == parts[-depth:] for d in dirs) > 1:
            depth += 1
        entry["run"] = "/".join(parts[-depth:])
    return found
