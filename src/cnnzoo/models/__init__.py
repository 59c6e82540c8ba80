"""The classic CNNs, one file per family, behind one registry."""

from cnnzoo.models import alexnet, googlenet, resnet, vgg  # noqa: F401  (importing registers the builders)
from cnnzoo.models.registry import ModelInfo, create_model, get_model_info, list_models, register_model

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]
