"""cnnzoo: the classic convolutional networks built from their papers; create, inspect, train, compare, study."""

from cnnzoo.errors import CnnzooError
from cnnzoo.models import create_model, get_model_info, list_models, register_model

__version__ = "0.1.0"
__all__ = ["CnnzooError", "create_model", "get_model_info", "list_models", "register_model", "train", "__version__"]


# The public function wins the attribute over the subpackage of the same name (importing any cnnzoo.train.*
# module would otherwise rebind ``cnnzoo.train`` to the package); cnnzoo.train.api is cheap to import.
from cnnzoo.train.api import train  # noqa: E402
