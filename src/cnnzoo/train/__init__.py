"""The trainer: config and recipes, the loop, checkpoints, the run directory, and its commands.

``cnnzoo.train(...)`` (the function, :func:`cnnzoo.train.api.train`) is the entry point. Modules: ``config``
(TrainConfig, recipes, config.toml), ``schedule`` (lr_at), ``engine`` (setup_training, make_optimizer, train_step),
``loop`` (train_one_epoch, evaluate, fit), ``state`` (RunState), ``checkpoint`` (atomic, weights_only, a run's state),
``run`` (one run end to end), ``rundir`` (the run directory's rules), ``report`` (the one test at the end),
``distributed``, ``stopping``, ``progress``, ``plots``, ``tools`` (eval, predict, export), ``trained``
(``cnnzoo.load_run``: a finished run as one object that predicts), ``api``, ``cli``. Import submodules with
``from cnnzoo.train.X import Y``: after ``import cnnzoo`` the attribute ``cnnzoo.train`` is the function, not this
package.

The optimisation strategies follow the papers' training sections: He et al. 2016 (arXiv:1512.03385) sections 3.4
and 4.2; Simonyan & Zisserman 2015 (arXiv:1409.1556) section 3.1; Krizhevsky et al. 2012 section 5; Szegedy et al.
2015 (arXiv:1409.4842) sections 5-6. Deliberate departures from them:

- "Divide the lr by 10 when the validation error plateaus" (AlexNet, VGG, ImageNet ResNet) is a fixed step schedule
  (``recipes/*-paper.toml`` say where), so the lr is a pure function of the step and runs resume exactly.
- ResNet-110's warm-up "until the training error is below 80% (about 400 iterations)" is judged on the mean error
  of the last 20 batches (one batch's error is too noisy to compare with 80%), capped at a fixed length.
- Weight decay skips BN and bias parameters by default (Goyal et al. 2017); the paper recipes switch that off,
  as the papers decayed every parameter.
- GoogLeNet's asynchronous SGD (DistBelief) is synchronous; its Polyak averaging is an EMA of the weights; the paper
  gives no initial lr, batch size or weight decay (the recipe's values are ours).
- The run's own test is one centre view (the papers' 10-crop, multi-scale and multi-crop views are
  ``cnnzoo eval --protocol``); model selection uses the validation split carved from the training set, the test split
  is evaluated once, at the end, with the best checkpoint.
- Under mixup/cutmix the reported training accuracy compares the predictions with the unmixed labels.
"""
