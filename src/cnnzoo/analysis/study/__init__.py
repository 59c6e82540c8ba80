"""``cnnzoo study``: the residual-network study of He et al. 2016, reproduced on the user's data.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385, section 4.2:
on CIFAR-10, plain nets get worse as they get deeper (the degradation problem, Figure 6 left: higher *training*
error, so it is not overfitting), while the same nets with shortcuts get better (Figure 6 middle, Table 6).

One module per job:

- :mod:`.gradients` (``study gradients``): gradient norms through depth, branch vs shortcut, by autograd;
- :mod:`.degradation` (``study degradation``): plain and residual nets of each depth, Figure 6 and Table 6;
- :mod:`.depth` (``study depth``): accuracy, time and parameters against depth, a depth suggested on validation;
- :mod:`.runs`: the training runs: reuse only of an identical configuration, resume, Ctrl-C, ``--jobs``;
- :mod:`.plan`: what a study will run, how long it should take (timed steps), progress while it runs;
- :mod:`.archive` (``study pack`` / ``unpack``): a study's resumable state in parts of at most 16 MiB;
- :mod:`.plots` and :mod:`.tables`: charts and CSV / Markdown, each redrawable from its CSV alone;
- :mod:`.cli`: the command line.

Every figure and table names its data through ``--label`` (e.g. "CIFAR-10 (JPEG q75)").
"""

from cnnzoo.analysis.study.archive import pack, unpack
from cnnzoo.analysis.study.cli import register
from cnnzoo.analysis.study.degradation import by_depth, degradation_pairs, run_degradation
from cnnzoo.analysis.study.depth import DEPTH_TOLERANCE, run_depth, suggest_depth
from cnnzoo.analysis.study.gradients import decay_ratio, gradient_norms, run_gradients
from cnnzoo.analysis.study.plots import plot_degradation, plot_depth, plot_gradients
from cnnzoo.analysis.study.runs import StudyInterrupted
from cnnzoo.analysis.study.tables import PAPER_ITERATIONS, PAPER_TABLE6, write_degradation_md

__all__ = [
    "DEPTH_TOLERANCE",
    "PAPER_ITERATIONS",
    "PAPER_TABLE6",
    "by_depth",
    "degradation_pairs",
    "StudyInterrupted",
    "decay_ratio",
    "gradient_norms",
    "pack",
    "plot_degradation",
    "plot_depth",
    "plot_gradients",
    "register",
    "run_degradation",
    "run_depth",
    "run_gradients",
    "suggest_depth",
    "unpack",
    "write_degradation_md",
]
