"""The causal-LM training loss as a mean over the loss tokens of the whole optimizer step.

One optimizer step covers ``accumulate`` micro batches on each of ``world`` processes. Averaging per-micro-batch
token means (what a plain ``loss.mean()`` per micro batch gives) weights a token by the size of the micro batch
it happens to land in, so the same global batch trains differently on 1 process and on N, or with micro batch
4 and micro batch 1. The loss here is the summed next-token NLL of the whole step divided by the step's number
of loss tokens, over all micro batches and all processes: what the HF Trainer does with ``num_items_in_batch``.

The count must be known before the first backward of the step. Every sample's loss tokens are known after
tokenization, and the train loader's batch sampler is deterministic for an epoch (seeded by seed + epoch), so
each process lists its micro batches for the epoch once, sums them per step, and one all-reduce adds the
processes' sums. Each micro batch then checks that it is the batch the list expected (its ``loss_tokens``
from the collator), so a sampler that is not deterministic stops the run instead of mis-scaling it.

Scaling (``training_loss``): Lightning divides a returned loss by ``accumulate`` and data parallelism (DDP,
FSDP2, DeepSpeed) averages gradients over ``world`` processes, so returning
``nll_sum * accumulate * world / step_tokens`` makes the step's gradient that of
``sum(nll over the step) / step_tokens`` under every strategy.

Memory (:func:`token_nll`): the plain loss upcasts the whole logits to fp32 and keeps their fp32 log-softmax for
the backward, two ``(batch, seq, vocab)`` fp32 tensors (a 150K-token vocabulary at 4 x 4096 tokens: 9.8 GB each,
more than the rest of a LoRA step's activations). The loss here runs over chunks of positions: each chunk is
upcast, reduced to its NLL and a per-position log-sum-exp, and dropped; the backward recomputes each chunk's
softmax from the saved logits (in the model's dtype) and the log-sum-exp. What stays is the logits as the head
produced them, their gradient (the same dtype) during the backward, and one chunk of at most
:data:`LOSS_CHUNK_VALUES` fp32 values (two copies while it is reduced).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import torch
from torch.autograd.function import once_differentiable
from torchmetrics import Metric


def micro_batch_counts(batch_sampler: Iterable[list[int]], counts: Sequence[int], num_batches: int | float) -> list[int]:
    """Loss tokens of each micro batch this process will see, in order (at most ``num_batches``)."""
    out: list[int] = []
    for indices in batch_sampler:
        if len(out) >= num_batches:
            break
        out.append(int(sum(counts[i] for i in indices)))
    return out


def step_sums(micro: Sequence[int], accumulate: int) -> list[int]:
    """Per optimizer step: the sum of its ``accumulate`` micro batches (the last step of an epoch may hold fewer)."""
    return [int(sum(micro[i:i + accumulate])) for i in range(0, len(micro), accumulate)]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over every process (in place); unchanged in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


class StepTokenLoss:
    """Per-epoch table of loss tokens per optimizer step (all processes) and the step loss to log.

    Used by a LightningModule in ``training_step``:
    ``loss = norm.training_loss(module, counts, batch_idx, batch["loss_tokens"], nll_sum)``, where ``counts()``
    returns the loss tokens of every training sample (index = dataset index); it is called only when the
    table is built, once per epoch, not on every micro batch.
    """

    def __init__(self) -> None:
        self._epoch: int | None = None
        self._micro: list[int] = []
        self._steps: list[int] = []
        self._nll_sum: torch.Tensor | None = None  # this process's summed NLL of the current step

    def _table(self, trainer, counts: Sequence[int]) -> None:
        loader = trainer.train_dataloader
        batch_sampler = getattr(loader, "batch_sampler", None)
        if batch_sampler is None:
            raise TypeError("the train loader has no batch sampler: loss tokens per optimizer step cannot be known")
        self._micro = micro_batch_counts(batch_sampler, counts, trainer.num_training_batches)
        local = step_sums(self._micro, trainer.accumulate_grad_batches)
        device = trainer.strategy.root_device
        steps = all_reduce_sum(torch.tensor(local, dtype=torch.long, device=device))
        self._steps = steps.tolist()
        self._epoch = trainer.current_epoch

    def step_tokens(self, trainer, counts: Callable[[], Sequence[int]], batch_idx: int, batch_tokens: int) -> int:
        """Loss tokens of the optimizer step that micro batch ``batch_idx`` belongs to (all processes)."""
        if self._epoch != trainer.current_epoch or batch_idx >= len(self._micro):
            self._table(trainer, counts())
        expected = self._micro[batch_idx]
        if batch_tokens != expected:
            raise RuntimeError(
                f"train micro batch {batch_idx} of epoch {trainer.current_epoch} has {batch_tokens} loss tokens, but "
                f"the train loader's batch sampler listed one with {expected}: the sampler is not deterministic "
                "within an epoch, so the loss cannot be normalized over the optimizer step")
        return self._steps[batch_idx // trainer.accumulate_grad_batches]

    def training_loss(self, module, counts: Callable[[], Sequence[int]], batch_idx: int, batch_tokens: int,
                      nll_sum: torch.Tensor) -> torch.Tensor:
        """The loss to return from ``training_step`` for a micro batch whose summed token NLL is ``nll_sum``;
        logs ``train/loss`` (the step's token mean over every process) at the step's last micro batch."""
        trainer = module.trainer
        accumulate, world = trainer.accumulate_grad_batches, trainer.world_size
        tokens = self.step_tokens(trainer, counts, batch_idx, batch_tokens)
        first = batch_idx % accumulate == 0
        self._nll_sum = nll_sum.detach().clone() if first or self._nll_sum is None else self._nll_sum + nll_sum.detach()
        last = (batch_idx + 1) % accumulate == 0 or batch_idx + 1 >= len(self._micro)
        if last:
            step_nll = all_reduce_sum(self._nll_sum.float().clone())
            module.log("train/loss", step_nll / max(tokens, 1), prog_bar=True, batch_size=1)
        # (sum over the step / step tokens) after Lightning's 1/accumulate and the 1/world of gradient averaging.
        return nll_sum * (accumulate * world / max(tokens, 1))

    def training_step(self, module, batch: dict, batch_idx: int, nll: torch.Tensor) -> torch.Tensor:
        """The causal-LM ``training_step`` of ``module`` for a micro batch whose summed response-token NLL is
        ``nll`` (:func:`token_nll`): the step-normalized loss, plus ``train/padding_fraction`` (pad tokens / all
        tokens over the epoch). The data's per-sample loss-token counts are read through
        ``datamodule.loss_token_counts("train")``."""
        counts = partial(module.trainer.datamodule.loss_token_counts, "train")  # read once per epoch
        loss = self.training_loss(module, counts, batch_idx, batch["loss_tokens"], nll)
        mask = batch["attention_mask"]
        module.log("train/padding_fraction", 1.0 - mask.float().mean(), on_step=False, on_epoch=True,
                   batch_size=mask.numel())
        return loss


#: Largest fp32 chunk of logits the loss upcasts at once (2**25 values = 128 MiB): 223 positions of a 150K-token
#: vocabulary, 1024 of a 32K one.
LOSS_CHUNK_VALUES = 2**25


def loss_chunk_rows(vocab: int, chunk_values: int = LOSS_CHUNK_VALUES) -> int:
    """Positions per chunk of :func:`token_nll` for a vocabulary of ``vocab`` tokens."""
    return max(1, chunk_values // max(int(vocab), 1))


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t (1-D, ascending) at which some row's next token (t + 1) is a response token of ``labels``
    (batch, seq; -100 elsewhere): the only positions whose logits the loss reads. The model's head is applied at
    these alone (``logits_to_keep``), which skips its matmul, the softmax and their backward at every prompt
    position. Never empty (position 0, which predicts nothing, stands in), so the graph always reaches the head."""
    positions = (labels[:, 1:] != -100).any(0).nonzero().view(-1)
    return positions if positions.numel() else positions.new_zeros(1)


def token_nll(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None, *,
              positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL (fp32) of ``logits`` (batch, seq, vocab) over the response tokens of ``labels``
    (batch, seq; -100 elsewhere), and the number of those tokens. Position t predicts token t+1. With
    ``positions`` (:func:`predicting_positions`), ``logits`` are (batch, len(positions), vocab): the logits at
    those positions only.

    Computed over chunks of ``chunk_rows`` positions (default :func:`loss_chunk_rows`), so the fp32 logits are
    never materialized whole (module docstring); value and gradient equal :func:`plain_token_nll`'s up to fp32
    rounding. ``logits`` is read as a (batch * seq, vocab) view: a non-contiguous tensor is copied once."""
    if positions is None:
        targets = torch.full_like(labels, -100)
        targets[:, :-1] = labels[:, 1:]  # (batch, seq): the token each position predicts; the last predicts nothing
    else:
        nxt = positions + 1
        targets = torch.where(nxt < labels.size(1), labels[:, nxt.clamp(max=labels.size(1) - 1)], -100)
    targets = targets.reshape(-1)
    vocab = logits.size(-1)
    rows = chunk_rows or loss_chunk_rows(vocab)
    nll = _ChunkedNLL.apply(logits.reshape(-1, vocab), targets, rows)
    return nll, (targets != -100).sum()


def plain_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_nll` in one piece (the whole logits upcast to fp32): the reference the chunked loss is tested
    against."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                            ignore_index=-100, reduction="sum")
    return nll, (targets != -100).sum()


class _ChunkedNLL(torch.autograd.Function):
    """``sum over rows with target != -100 of logsumexp(x) - x[target]`` for ``logits`` (n, vocab) in any float
    dtype, ``rows`` rows at a time in fp32. Saves the logits (not a copy) and the fp32 log-sum-exp (n,); the
    backward writes ``grad * (softmax(x) - onehot(target))`` chunk by chunk into a gradient of the logits' dtype."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        n = logits.size(0)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for i in range(0, n, rows):
            x = logits[i:i + rows].float()  # (rows, vocab); a view when the logits are fp32 (read only here)
            t = targets[i:i + rows]
            chunk_lse = torch.logsumexp(x, dim=-1)
            lse[i:i + rows] = chunk_lse
            picked = x.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total += torch.where(t != -100, chunk_lse - picked, 0.0).sum()
        ctx.save_for_backward(logits, targets, lse)
        ctx.rows = rows
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        rows = ctx.rows
        out = torch.empty_like(logits)
        for i in range(0, logits.size(0), rows):
            # A fresh fp32 copy (never the saved logits themselves), turned into the softmax in place.
            p = logits[i:i + rows].to(torch.float32, copy=True).sub_(lse[i:i + rows, None]).exp_()
            t = targets[i:i + rows]
            valid = (t != -100).to(torch.float32)
            p.scatter_add_(-1, t.clamp(min=0).unsqueeze(-1), -valid.unsqueeze(-1))  # minus the one-hot target
            p.mul_((valid * grad).unsqueeze(-1))  # rows without a target get no gradient
            out[i:i + rows] = p
        return out, None, None


class TokenMeanNLL(Metric):
    """Evaluation loss as one token mean over the whole split (all batches, all processes): summed NLL and
    token counts are accumulated and divided once, so batch size and world size do not weight tokens.

    A non-finite NLL (a diverged model) is never dropped nor averaged away: the states are plain sums (no
    torchmetrics ``nan_strategy``, whose aggregators drop nan with a warning), and a split with any non-finite
    batch reports nan (inf when every bad batch is inf) as its loss and perplexity, never 0.0 and 1.0."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # Batches whose summed NLL was nan / +-inf: counted apart, so that no later arithmetic can hide them.
        self.add_state("nan_batches", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("inf_batches", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor, tokens: torch.Tensor) -> None:
        nll = nll.detach().to(self.nll.dtype)
        self.nan_batches += torch.isnan(nll).sum()
        self.inf_batches += torch.isinf(nll).sum()
        self.nll += nll.sum()
        self.tokens += tokens.detach().to(self.tokens.dtype).sum()

    def compute(self) -> torch.Tensor:
        if self.nan_batches > 0:
            return torch.tensor(math.nan)
        if self.inf_batches > 0:
            return torch.tensor(math.inf)
        return self.nll / self.tokens.clamp(min=1)

    def log_to(self, module, split: str) -> None:
        """Log ``<split>/loss`` and ``<split>/perplexity`` from the accumulated tokens, then reset."""
        loss = self.compute().item()
        self.reset()
        module.log_dict({f"{split}/loss": loss, f"{split}/perplexity": perplexity(loss)}, sync_dist=True)


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped at ``exp(50)`` for a finite loss; nan and inf stay nan and inf."""
    if not math.isfinite(loss):
        return loss
    return math.exp(min(loss, 50.0))
