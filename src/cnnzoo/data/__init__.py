"""The data layer: named datasets and image folders, a decoded-uint8 cache, and loaders that feed the trainer.

``load_data(data, ...) -> DataBundle`` (train/val/test :class:`BatchLoader` s) is the one entry point; see
docs/architecture.md, "Data". ``load_images`` preprocesses image files the way evaluation does.
"""

from cnnzoo.data.bundle import BatchLoader, DataBundle, DataError
from cnnzoo.data.load import load_data, load_images

__all__ = ["BatchLoader", "DataBundle", "DataError", "load_data", "load_images"]
