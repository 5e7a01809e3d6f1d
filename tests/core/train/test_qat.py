"""The QAT protocol's config: checked when built, errors that name the field."""

from __future__ import annotations

import pytest

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.train.qat import QATConfig, evaluate_policy


@pytest.mark.parametrize(("changes", "message"), [
    ({"epochs": 0}, "qat.epochs: must be at least 1, got 0"),
    ({"epochs": 2.5}, "qat.epochs: must be at least 1, got 2.5"),
    ({"eval_split": "train"}, "qat.eval_split: must be 'val' or 'test', got 'train'"),
])
def test_bad_qat_config_names_the_field(changes, message):
    with pytest.raises(UserInputError, match=message):
        QATConfig(**changes)


def test_evaluate_policy_refuses_zero_epochs_set_after_construction():
    config = QATConfig()
    config.epochs = 0
    with pytest.raises(UserInputError, match="qat.epochs: must be at least 1, got 0"):
        evaluate_policy(None, "digits_cnn", None, None, config)


def test_defaults_are_valid():
    assert QATConfig().epochs == 3 and QATConfig(eval_split="test").eval_split == "test"
