"""cnnzoo: the classic convolutional networks built from their papers; create, inspect, train, compare, study."""

from cnnzoo.errors import CnnzooError
from cnnzoo.models import create_model, get_model_info, list_models, register_model

__version__ = "0.1.0"
__all__ = ["CnnzooError", "create_model", "get_model_info", "list_models", "register_model", "train", "__version__"]


def train(*args, **kwargs):
    """Train a model; see :func:`cnnzoo.train.api.train` (imported lazily to keep ``import cnnzoo`` light)."""
    from cnnzoo.train.api import train as _train

    return _train(*args, **kwargs)
