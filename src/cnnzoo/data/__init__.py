"""The data layer: named datasets and image folders, a decoded-uint8 cache, and loaders that feed the trainer.

``load_data(data, ...) -> DataBundle`` (train/val/test :class:`BatchLoader` s) is the one entry point; see
docs/architecture.md, "Data". ``load_images`` preprocesses image files the way evaluation does;
``save_example`` writes one test image as a PNG (the README's ``seven.png``).

``load_data`` and ``load_images`` are imported on first use, so the layer's constants (``cnnzoo.data.bundle``:
``AUGMENTS``, ``Stream``, ``default_home``), which the training config reads, come without torchvision.
"""

from cnnzoo.data.bundle import BatchLoader, DataBundle, DataError

__all__ = ["BatchLoader", "DataBundle", "DataError", "load_data", "load_images", "save_example"]


def __getattr__(name: str):
    if name in ("load_data", "load_images", "save_example"):
        from cnnzoo.data import load

        return getattr(load, name)
    raise AttributeError(f"module 'cnnzoo.data' has no attribute {name!r}")
