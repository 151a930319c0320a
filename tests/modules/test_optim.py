import copy
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


# ----- tuneloop's AdamW: the fused kernel where the device has one ----------------------------------------------
def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))


def _train(model, optimizer, steps=5):
    torch.manual_seed(1)
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_adamw_picks_the_fused_kernel_on_cpu_and_trains_like_foreach():
    from modules.optim import AdamW

    fused_model, ref_model = _model(), _model()
    fused = AdamW(param_groups(fused_model), lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(param_groups(ref_model), lr=1e-2, weight_decay=0.1, foreach=True)
    assert fused.implementation == "fused" and all(g["fused"] and not g["foreach"] for g in fused.param_groups)
    from lightning.pytorch.plugins.precision.amp import _optimizer_handles_unscaling

    assert not _optimizer_handles_unscaling(fused)  # fp16: Lightning unscales first, so clipping stays allowed
    assert [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]
    _train(fused_model, fused)
    _train(ref_model, ref)
    for a, b in zip(fused_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused_model[0].weight, _model()[0].weight)  # it did train


def test_adamw_kernel_choice():
    from modules.optim import AdamW, adamw_implementation

    p = nn.Parameter(torch.zeros(3))
    assert AdamW([p], fused=False).implementation == "single-tensor"  # torch's CPU default
    assert adamw_implementation([p.to(torch.bfloat16)]) == "fused"
    assert adamw_implementation([torch.zeros(3, dtype=torch.long)]) == "single-tensor"
    assert adamw_implementation([torch.zeros(3, device="meta")]) == "single-tensor"
    partitioned = nn.Parameter(torch.zeros(3))
    partitioned.ds_id = 0  # a DeepSpeed ZeRO-3 parameter: DeepSpeed steps its own partitions
    assert adamw_implementation([partitioned]) == "single-tensor"
    assert adamw_implementation([partitioned], fused=True) == "fused"  # asked for explicitly
    assert adamw_implementation([]) == "single-tensor"


@pytest.mark.parametrize("saved_fused", [False, True])
def test_a_checkpoint_resumes_on_this_process_kernel(saved_fused):
    """A state saved by either kernel resumes on the other and trains on exactly as the uninterrupted run."""
    from modules.optim import AdamW

    model = _model()
    first = torch.optim.AdamW(param_groups(model), lr=1e-2, fused=saved_fused, foreach=False)
    _train(model, first, steps=3)
    state = copy.deepcopy(first.state_dict())  # as saved: no tensor shared with the running optimizer
    resumed_model = _model()
    resumed_model.load_state_dict(model.state_dict())
    resumed = AdamW(param_groups(resumed_model), lr=1e-2, fused=not saved_fused)
    resumed.load_state_dict(state)
    assert all(g["fused"] is (not saved_fused) for g in resumed.param_groups)
    step = next(iter(resumed.state.values()))["step"]
    assert step.dtype == torch.float32 and float(step) == 3.0
    _train(model, first, steps=2)
    _train(resumed_model, resumed, steps=2)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fsdp2_sharded_parameters_take_the_fused_kernel(tmp_path):
    """FSDP2 parameters are DTensors; the fused kernel steps them as foreach does (one process, gloo, CPU)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from modules.optim import AdamW

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        fused_model, ref_model = fully_shard(_model()), fully_shard(_model())
        fused = AdamW(param_groups(fused_model), lr=1e-2)
        ref = torch.optim.AdamW(param_groups(ref_model), lr=1e-2, foreach=True)
        assert type(fused_model[0].weight).__name__ == "DTensor" and fused.implementation == "fused"
        _train(fused_model, fused, steps=3)
        _train(ref_model, ref, steps=3)
        for a, b in zip(fused_model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(a.full_tensor(), b.full_tensor(), rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_adamw_and_its_knob_from_a_recipe():
    from jsonargparse import ArgumentParser

    from modules.base import OptimizerCallable
    from modules.optim import AdamW

    parser = ArgumentParser()
    parser.add_argument("--optimizer", type=OptimizerCallable)
    for extra, kernel in (([], "fused"), (["--optimizer.fused=false"], "single-tensor")):
        cfg = parser.parse_args(["--optimizer=modules.optim.AdamW", "--optimizer.lr=0.01", *extra])
        optimizer = parser.instantiate_classes(cfg).optimizer([nn.Parameter(torch.zeros(2))])
        assert isinstance(optimizer, AdamW) and optimizer.implementation == kernel
        assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["weight_decay"] == 0.01
