import math

import pytest
import torch
from torch import nn

from modules.optim import SchedulerSpec, param_groups


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.rms_norm = nn.Parameter(torch.ones(4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_skip_bias_and_norm_weights():
    m = Tiny()
    groups = param_groups(m)
    decay, no_decay = groups
    assert "weight_decay" not in decay  # the optimizer's own weight_decay applies
    assert no_decay["weight_decay"] == 0.0
    assert [p is m.proj.weight for p in decay["params"]] == [True]
    ids = {id(p) for p in no_decay["params"]}
    assert ids == {id(m.proj.bias), id(m.LayerNorm.weight), id(m.LayerNorm.bias), id(m.rms_norm)}
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def _lrs(spec, total, lr=1.0):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = spec.build(opt, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_with_warmup():
    lin = _lrs(SchedulerSpec("linear", warmup_ratio=0.1), 100)
    assert lin[0] == 0.0 and lin[5] == pytest.approx(0.5) and lin[10] == pytest.approx(1.0)
    assert lin[55] == pytest.approx(0.5) and lin[-1] == pytest.approx(1 / 90)
    cos = _lrs(SchedulerSpec("cosine", warmup_steps=10), 100)
    assert cos[10] == pytest.approx(1.0)
    assert cos[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    const = _lrs(SchedulerSpec("constant", warmup_steps=4), 20)
    assert const[2] == pytest.approx(0.5) and const[4:] == [1.0] * 16


def test_scheduler_spec_validates():
    with pytest.raises(ValueError, match="warmup_ratio"):
        SchedulerSpec(warmup_ratio=1.5)
