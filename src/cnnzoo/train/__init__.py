"""The trainer: config and recipes, the loop, checkpoints, the run directory, and its commands.

``cnnzoo.train(...)`` (the function, :func:`cnnzoo.train.api.train`) is the entry point. Modules: ``config``
(TrainConfig, recipes, config.toml), ``engine`` (lr_at, make_optimizer, train_step), ``loop`` (train_one_epoch,
evaluate, fit), ``checkpoint`` (atomic, weights_only), ``run`` (one run end to end), ``api``, ``cli``.
Import submodules with ``from cnnzoo.train.X import Y``: after ``import cnnzoo`` the attribute ``cnnzoo.train`` is
the function, not this package.
"""
