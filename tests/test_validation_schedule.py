"""Validation runs every ``val_interval`` epochs and after the last one: a short try still validates."""

import types

import pytest
from ignite.engine import Engine

from ldmonai.engines import FinalValidationHandler


@pytest.mark.parametrize("interval, epochs, expected", [(10, 3, [3]), (2, 3, [2, 3]), (2, 4, [2, 4]), (1, 3, [1, 2, 3]),
                                                        (25, 150, [25, 50, 75, 100, 125, 150])])
def test_validates_on_the_interval_and_after_the_last_epoch(interval, epochs, expected, caplog):
    runs = []
    handler = FinalValidationHandler(interval=interval)
    handler.validator = types.SimpleNamespace(run=runs.append)  # stands in for a MONAI evaluator
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    with caplog.at_level("WARNING", logger="ldmonai"):
        trainer.run([0], max_epochs=epochs)
    assert runs == expected
    assert ("once more after the last epoch" in caplog.text) == bool(epochs % interval)
