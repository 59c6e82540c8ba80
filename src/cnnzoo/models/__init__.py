"""The classic CNNs, one file per family, behind one registry.

Importing the package imports every module in it, and importing a family's module registers its builders: adding a
family is adding one file (no import list to forget). Private modules (``_common``) and the registry are skipped.
"""

import importlib
import pkgutil

from cnnzoo.models.registry import ModelInfo, create_model, get_model_info, list_models, register_model

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]
