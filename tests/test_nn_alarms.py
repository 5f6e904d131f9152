"""The alarm networks of A3 (MLP) and R2-AD2 (LSTMs) and their size tables."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uniad_plugin.detectors import r2ad2
from uniad_plugin.nn.alarms import (
    ALARM_BIG,
    ALARM_SMALL,
    ALARMS,
    AlarmNet,
    GradientAlarm,
    default_hidden,
    lstm_sequence,
)


def test_size_tables_are_written_once():
    assert ALARM_BIG == (1000, 500, 200, 75)
    assert ALARM_SMALL == (100, 50, 25, 10)
    assert ALARMS == {"small": ALARM_SMALL, "big": ALARM_BIG}
    # R2AD2's alarm is the paper's small one
    assert r2ad2.ALARM_DIMS is ALARM_SMALL


def test_default_hidden_rule():
    assert default_hidden(37760) == [1000, 500, 200, 75]
    assert default_hidden(2000) == [1000, 500, 200, 75]
    assert default_hidden(200) == [100, 50, 20, 8]
    assert default_hidden(10) == [8, 8, 8, 8]
    with pytest.raises(ValueError, match="expected"):
        default_hidden(0)


def test_mlp_alarm_shapes_init_and_seeded_dropout():
    alarm = AlarmNet(12, [8, 4], dropout=0.5)
    alarm.reset_parameters(torch.Generator().manual_seed(0))
    assert all(torch.equal(lin.bias, torch.zeros_like(lin.bias)) for lin in alarm.hidden)
    h = torch.randn(6, 12)
    alarm.train()
    a = alarm(h, torch.Generator().manual_seed(1))
    b = alarm(h, torch.Generator().manual_seed(1))
    assert a.shape == (6,) and torch.equal(a, b)
    alarm.eval()
    assert torch.equal(alarm(h), alarm(h))


def test_lstm_sequence_matches_nn_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, batch_first=True)
    x = torch.randn(3, 4, 5)
    assert torch.allclose(lstm_sequence(lstm, x), lstm(x)[0], atol=1e-6)


def test_gradient_alarm_shapes():
    alarm = GradientAlarm(20, (8, 6, 4, 3), dropout=0.4).eval()
    g = torch.randn(5, 3, 20)
    assert alarm(g).shape == (5,)
    assert alarm.norm.num_features == 20  # one normalisation shared by all time steps
    assert alarm.normalise(g * 1e30).abs().max() <= 1e4
    assert alarm.dims == [8, 6, 4, 3]
    with pytest.raises(ValueError, match="two"):
        GradientAlarm(20, (8,))
