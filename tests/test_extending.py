"""The extension points of docs/architecture.md ("Extending cnnzoo") are tables: every name they hold is one the
config accepts, and an unknown name is one line, never a silent fallback to another optimizer or source."""

from __future__ import annotations

import pytest
import torch

from cnnzoo.data import load as data_load
from cnnzoo.errors import CnnzooError
from cnnzoo.train import config as train_config
from cnnzoo.train import engine


def test_optimizer_table_matches_the_config_names():
    assert tuple(engine.OPTIMIZERS) == train_config.OPTIMIZERS


@pytest.mark.parametrize("name", train_config.OPTIMIZERS)
def test_each_optimizer_is_the_one_named(name):
    cfg = train_config.build_config(optimizer=name, device="cpu")
    opt = engine.make_optimizer(torch.nn.Linear(2, 2), cfg, torch.device("cpu"))
    assert type(opt).__name__.lower() == name


def test_unknown_optimizer_is_one_line_not_adamw():
    cfg = train_config.build_config(device="cpu")
    object.__setattr__(cfg, "optimizer", "lamb")  # past the config's own check, as a caller building one by hand
    with pytest.raises(CnnzooError, match=r"^unknown optimizer 'lamb': expected one of sgd, adamw$"):
        engine.make_optimizer(torch.nn.Linear(2, 2), cfg, torch.device("cpu"))


def test_dataset_sources_are_a_table_and_unknown_names_are_one_line():
    assert tuple(data_load.SOURCES) == data_load.NAMED
    with pytest.raises(CnnzooError, match=r"^unknown dataset 'imagenet22k': expected one of digits, ") as e:
        data_load.decode("imagenet22k")
    assert "\n" not in str(e.value)
    assert data_load.decode("digits").train_images.shape[0] > 0


def test_schedules_are_a_table_and_an_unknown_name_is_one_line():
    from cnnzoo.train import schedule

    assert set(schedule.SCHEDULES) >= {"constant", "step", "multistep", "cosine", "linear", "onecycle"}
    for name in schedule.SCHEDULES:  # every name the table holds is one the config accepts, and gives an lr
        cfg = train_config.build_config(schedule=name, epochs=2, device="cpu")
        assert 0.0 <= schedule.lr_at(3, cfg, 5) <= 10 * cfg.lr
    cfg = train_config.build_config(device="cpu")
    object.__setattr__(cfg, "schedule", "polynomial")  # past the config's own check
    with pytest.raises(CnnzooError, match=r"^unknown schedule 'polynomial': expected one of ") as e:
        schedule.lr_at(0, cfg, 5)
    assert "\n" not in str(e.value)
    with pytest.raises(CnnzooError, match="polynomial"):
        train_config.build_config(schedule="polynomial")
