"""The causal-LM training loss is the token mean over the whole optimizer step (modules.token_loss)."""

from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from datamodules.instruction import InstructionDataModule
from modules.backbone import BackboneSpec, LoraSpec, TinySpec
from modules.causal_lm import CausalLMModule
from modules.token_loss import micro_batch_counts, step_sums, token_nll
from tests.conftest import TOKENIZER, write_jsonl
from trainer.callbacks import RunArtifacts
from datamodules.batch import BatchSpec


def test_micro_batch_counts_and_step_sums():
    counts = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    sampler = [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert micro_batch_counts(sampler, counts, float("inf")) == [4, 5, 14, 8, 5]
    assert micro_batch_counts(sampler, counts, 3) == [4, 5, 14]  # limit_train_batches
    assert step_sums([4, 5, 14, 8, 5], 2) == [9, 22, 5]  # the epoch's last step holds fewer micro batches
    assert step_sums([4, 5, 14], 4) == [23]


def test_step_loss_is_the_token_mean_over_the_step_not_a_mean_of_micro_batch_means(tmp_path):
    """Global batch 8 as 4 micro batches of 2 on one process; answers of very different lengths. With lr 0 the
    model stays the initial one, so each logged step loss must equal the summed NLL of the step's 8 samples over
    their loss tokens, computed here directly; the mean of micro-batch means (the earlier loss) differs."""
    pl.seed_everything(0)
    rows = [{"id": f"r{i}", "instruction": "Answer briefly." if i % 2 else "Explain in detail.",
             "output": " ".join(["word"] * (1 + 9 * (i % 3)) + [str(i)])} for i in range(16)]
    path = str(write_jsonl(tmp_path / "data.jsonl", rows))
    dm = InstructionDataModule(format="alpaca", train_file=path, val_file=path, batch=BatchSpec(8, 2), cutoff_len=128,
                               num_sample_prompts=0, cache_dir=str(tmp_path / "cache"), seed=5)
    backbone = BackboneSpec(name_or_path="komt-llama2-13b", arch_config="configs/models/komt-llama2-13b",
                            tokenizer=str(TOKENIZER), tiny=True, tiny_size=TinySpec(initializer_range=0.3, dropout=0.0))
    module = CausalLMModule(backbone=backbone, lora=LoraSpec(dropout=0.0),
                            optimizer=partial(torch.optim.SGD, lr=0.0))
    artifacts = RunArtifacts()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         accumulate_grad_batches=4, default_root_dir=str(tmp_path / "run"), callbacks=[artifacts])
    dm.use_preprocessing(module.tokenizer, module.processor)
    trainer.fit(module, datamodule=dm)
    assert artifacts.train_steps == [1, 2]

    sampler = trainer.train_dataloader.sampler
    sampler.set_epoch(0)
    order = list(sampler)
    ds = dm.splits["train"]
    module.model.eval()
    expected, micro_means = [], []
    with torch.no_grad():
        for step in range(2):
            nll = tokens = 0.0
            means = []
            for m in range(4):
                batch = dm.collate_fn([ds[i] for i in order[step * 8 + 2 * m: step * 8 + 2 * m + 2]])
                s, n = token_nll(module(batch), batch["labels"])
                nll, tokens = nll + float(s), tokens + float(n)
                means.append(float(s) / float(n))
            expected.append(nll / tokens)
            micro_means.append(sum(means) / 4)
    assert artifacts.train_loss == pytest.approx(expected, rel=1e-6)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected[-1], rel=1e-6)
    assert max(abs(a - b) for a, b in zip(expected, micro_means)) > 1e-3  # the two definitions really differ
