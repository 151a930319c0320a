import pytest

from datamodules.batch import BatchSizeError, BatchSpec, derive_accumulation


@pytest.mark.parametrize(
    "global_bs, micro, world, expected",
    [(32, 16, 1, 2), (32, 16, 2, 1), (128, 4, 1, 32), (128, 4, 3 * 1, None), (128, 4, 8, 4), (128, 4, 16, 2),
     (128, 4, 32, 1), (64, 8, 2 * 4, 1)],
)
def test_accumulation_for_world_sizes(global_bs, micro, world, expected):
    if expected is None:
        with pytest.raises(BatchSizeError) as e:
            derive_accumulation(global_bs, micro, world)
        # The message names the three numbers involved.
        assert f"global_batch_size={global_bs}" in str(e.value)
        assert f"micro_batch_size={micro}" in str(e.value)
        assert f"world_size={world}" in str(e.value)
    else:
        acc = derive_accumulation(global_bs, micro, world)
        assert acc == expected
        assert acc * micro * world == global_bs


def test_global_smaller_than_micro_world_is_an_error():
    with pytest.raises(BatchSizeError, match="not divisible"):
        BatchSpec(global_batch_size=16, micro_batch_size=8).accumulation(4)


def test_batch_spec_validates_itself():
    with pytest.raises(BatchSizeError):
        BatchSpec(global_batch_size=32, micro_batch_size=0)
    with pytest.raises(BatchSizeError, match="smaller than micro_batch_size"):
        BatchSpec(global_batch_size=4, micro_batch_size=8)


# ----- data.batch.rounding ----------------------------------------------------------------------------------
TODAY = ("global_batch_size=128 is not divisible by micro_batch_size=4 x world_size=3 (= 12); choose a global "
         "batch that is a multiple of 12, or change the micro batch or the number of devices/nodes")


def test_exact_rounding_refuses_128_over_4_x_3_with_todays_message():
    spec = BatchSpec(global_batch_size=128, micro_batch_size=4)
    assert spec.rounding == "exact"  # the default
    with pytest.raises(BatchSizeError) as e:
        spec.accumulation(3)
    assert str(e.value).startswith(TODAY)
    assert "data.batch.rounding=floor to train with 120" in str(e.value)


def test_floor_rounding_rounds_accumulation_down_and_logs_the_effective_batch(caplog):
    spec = BatchSpec(global_batch_size=128, micro_batch_size=4, rounding="floor")
    with caplog.at_level("INFO", logger="datamodules.batch"):
        assert spec.accumulation(3) == 10
    assert spec.effective_global_batch_size(3) == 120
    lines = [r.getMessage() for r in caplog.records if r.name == "datamodules.batch"]
    assert len(lines) == 1 and "effective global batch 120 (requested 128)" in lines[0]
    # A global batch that divides is unchanged under floor, and nothing is logged.
    caplog.clear()
    with caplog.at_level("INFO", logger="datamodules.batch"):
        assert spec.accumulation(8) == 4 and spec.effective_global_batch_size(8) == 128
    assert not caplog.records


def test_floor_still_refuses_an_accumulation_of_zero():
    spec = BatchSpec(global_batch_size=8, micro_batch_size=4, rounding="floor")
    with pytest.raises(BatchSizeError, match=r"global_batch_size=8 is smaller than micro_batch_size=4 x "
                                             r"world_size=3 \(= 12\)"):
        spec.accumulation(3)
    with pytest.raises(BatchSizeError, match="not divisible"):  # exact: no floor hint when floor cannot help
        BatchSpec(global_batch_size=8, micro_batch_size=4).accumulation(3)


def test_unknown_rounding_is_refused():
    with pytest.raises(BatchSizeError, match="data.batch.rounding must be 'exact' or 'floor', got 'round'"):
        BatchSpec(rounding="round")


def test_length_grouped_sampler_gets_the_effective_global_batch():
    from types import SimpleNamespace

    from datamodules.instruction import InstructionDataModule

    dm = InstructionDataModule(format="alpaca", group_by_length=True,
                               batch=BatchSpec(global_batch_size=128, micro_batch_size=4, rounding="floor"))
    dm.splits["train"] = {"length": list(range(1, 361))}  # 360 samples: 3 full steps of 120
    dm.trainer = SimpleNamespace(world_size=3, global_rank=0)  # LightningDataModule.trainer is a plain attribute
    dm.collate_fn = None
    sampler = dm.train_dataloader().sampler
    assert sampler.global_batch == 120
    assert [len(step) for step in sampler.steps()] == [120, 120, 120]
    assert len(sampler) == 120  # this rank's samples: 3 steps x 40


def test_cli_and_planner_use_the_effective_global_batch(tmp_path, capsys):
    """``tuneloop fit`` derives accumulation 2 (24 of 32 samples per step) from micro 12 under floor; ``tuneloop
    plan`` shows the instruction recipe's 128 / micro 4 on 3 GPUs as accumulation 10 and effective batch 120."""
    from trainer.cli import TuneloopCLI
    from trainer.plan.cli import main
    from trainer.plan.report import plan

    import logging

    lines = []  # the commands route "datamodules" to stdout without propagation (trainer/logs.py): listen here
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("datamodules.batch").addHandler(handler)
    try:
        cli = TuneloopCLI(args=["-c", "configs/encoder/waam-anomaly.yaml", "-c", "configs/debug.yaml",
                                f"--run.root={tmp_path}", "--trainer.logger=false",
                                "--data.init_args.batch.micro_batch_size=12", "--data.init_args.batch.rounding=floor"],
                          run=False)
    finally:
        logging.getLogger("datamodules.batch").removeHandler(handler)
    assert cli.trainer.accumulate_grad_batches == 2
    assert len(lines) == 1 and "effective global batch 24 (requested 32)" in lines[0]
    floor = tmp_path / "floor.yaml"
    floor.write_text("data:\n  init_args:\n    batch: {rounding: floor}\n")
    recipe = ["configs/sft/komt-llama2-13b-lora.yaml", "configs/debug.yaml", str(floor)]
    result = plan(recipe, gpus=3)
    assert result["accumulation"] == {"accumulate_grad_batches": 10, "error": None}
    assert result["batch"]["effective_global_batch_size"] == 120 and result["batch"]["global_batch_size"] == 128
    main([arg for path in recipe for arg in ("-c", path)] + ["--gpus", "3"])
    assert "global 128 (effective 120: rounding floor) · micro 4" in capsys.readouterr().out
