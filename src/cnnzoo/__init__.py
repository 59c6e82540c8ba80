"""cnnzoo: the classic convolutional networks built from their papers; create, inspect, train, compare, study.

The public names are imported on first use (module ``__getattr__``, PEP 562), so ``import cnnzoo`` and
``cnnzoo --version`` / ``--help`` do not pay for importing torch (seconds on a small machine).
"""

from cnnzoo.errors import CnnzooError

__version__ = "0.1.0"
__all__ = [
    "CnnzooError",
    "create_model",
    "get_model_info",
    "list_models",
    "load_run",
    "register_model",
    "train",
    "__version__",
]

# Public name -> the module that defines it.
_LAZY = {
    "create_model": "cnnzoo.models",
    "get_model_info": "cnnzoo.models",
    "list_models": "cnnzoo.models",
    "register_model": "cnnzoo.models",
    "load_run": "cnnzoo.train.trained",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# The public function wins the attribute over the subpackage of the same name (importing any cnnzoo.train.*
# module would otherwise rebind ``cnnzoo.train`` to the package), so it is bound eagerly: cnnzoo.train.api imports
# neither torch nor the trainer until called.
from cnnzoo.train.api import train  # noqa: E402
