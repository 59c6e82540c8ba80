"""The study's files other than charts: CSV rows and the Markdown table beside the paper's Table 6.

Every writer replaces its file atomically (a temporary file, then ``os.replace``), so an interrupted study leaves
the previous file or the new one, never half of one.
"""

from __future__ import annotations

from pathlib import Path

from cnnzoo.analysis.tables import to_csv
from cnnzoo.atomic import write_atomic

# Table 6 of the paper: CIFAR-10 test error (%) of the CIFAR ResNets (110: best of 5 runs; mean 6.61 +- 0.16).
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_ITERATIONS = 64_000  # section 4.2: lr 0.1, divided by 10 at 32k and 48k, stop at 64k (batch 128)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_atomic(path, text)


def write_csv(path: str | Path, rows: list[dict], fields: list[str]) -> None:
    """``rows`` as CSV with the columns ``fields`` (None is written as an empty cell), atomically."""
    write_atomic(path, to_csv(rows, fields))


def num(value: object) -> float | None:
    """A number from a row built here or read back from a CSV (where None became '')."""
    return None if value in (None, "") else float(value)


def schedule_words(overrides: dict, steps: int) -> str:
    """The schedule in words, for the table: full, or shortened (and how far) with its learning-rate steps."""
    if not (overrides.get("epochs") or overrides.get("iterations")):
        return f"the recipe's full schedule ({steps:,} iterations)"
    length = f"{overrides['epochs']} epochs = " if overrides.get("epochs") else ""
    text = f"**shortened** to {length}{steps:,} iterations ({100 * steps / PAPER_ITERATIONS:.3g} % of the paper's 64k)"
    if overrides.get("milestones"):  # shorten() puts them at 50 % and 75 %, as the paper's 32k and 48k of 64k
        text += f", learning rate divided by 10 at epochs {', '.join(f'{m:g}' for m in overrides['milestones'])}"
    elif overrides.get("milestone_steps"):
        text += f", learning rate divided by 10 at iterations {', '.join(map(str, overrides['milestone_steps']))}"
    return text


def write_degradation_md(
    path: str | Path, rows: list[dict], *, label: str, recipe: str, seeds: list[int], overrides: dict
) -> None:
    """The final errors as a Markdown table with the paper's Table 6 beside them (``rows`` as in degradation.csv)."""
    lines = [
        f"# Degradation study on {label}",
        "",
        f"Recipe `{recipe}`, {schedule_words(overrides, int(num(rows[0]['steps'])))}; seed(s) "
        f"{', '.join(map(str, seeds))}{' (mean ± std)' if len(seeds) > 1 else ''}. Training error: the last epoch's, "
        "on augmented batches. Test error: measured once per run, at the end, with the weights of the best "
        "validation epoch (the per-epoch curves in degradation.png are validation error, on images held out from the "
        "training split).",
        "",
        "The paper's figures (He et al. 2016, Table 6) are CIFAR-10 test errors after 64k iterations (ResNet-110: "
        "6.43 best of 5 runs, 6.61 ± 0.16 mean). The paper gives the plain nets only as curves (Figure 6 left: "
        "training and test error rise from plain-20 to plain-56; plain-110, above 60 %, is not plotted).",
        "",
        "| model | final training error (%) | test error (%) | paper, Table 6 (%) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        std = num(r["test_error_std"]) or 0.0
        spread = f" ± {std:.2f}" if int(r["seeds"]) > 1 else ""
        paper = num(r["paper_test_error"])
        lines.append(
            f"| {r['model']} | {num(r['final_train_error']):.2f} | {num(r['test_error']):.2f}{spread} | "
            f"{'—' if paper is None else f'{paper:.2f}'} |"
        )
    write_text(path, "\n".join(lines) + "\n")
