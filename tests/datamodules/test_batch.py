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
