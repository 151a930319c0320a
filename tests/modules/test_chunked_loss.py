"""The chunked causal-LM loss (modules.token_loss.token_nll) equals the plain fp32 loss, value and gradient, and
never upcasts the whole logits."""

import pytest
import torch

from modules.token_loss import loss_chunk_rows, plain_token_nll, token_nll


def _case(batch=3, seq=11, vocab=37, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, seq, vocab, generator=g) * 3).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[0, :4] = -100  # a prompt
    labels[1, 7:] = -100  # right padding
    labels[2, ::3] = -100  # scattered
    return logits, labels


@pytest.mark.parametrize("rows", [1, 4, 7, 32, 33, 1000])  # 3 x 11 = 33 positions: chunks that do and do not divide
def test_chunked_loss_and_gradient_equal_the_plain_loss(rows):
    logits, labels = _case()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    nll, n = token_nll(a, labels, chunk_rows=rows)
    ref, ref_n = plain_token_nll(b, labels)
    assert int(n) == int(ref_n) == int((labels[:, 1:] != -100).sum())
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, ref, rtol=1e-6, atol=1e-5)
    (nll * 0.7).backward()  # a scaled loss, as training_loss scales it
    (ref * 0.7).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(a.detach(), logits)  # the backward never writes into the saved logits
    assert a.grad[:, -1].abs().sum() == 0 and a.grad[0, :3].abs().sum() == 0  # positions without a target


def test_a_16_bit_head_gets_its_gradient_in_its_own_dtype():
    logits, labels = _case(dtype=torch.bfloat16, seed=1)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    nll, _ = token_nll(a, labels, chunk_rows=5)
    ref, _ = plain_token_nll(b, labels)
    torch.testing.assert_close(nll, ref, rtol=1e-6, atol=1e-4)  # both reduce in fp32
    nll.backward()
    ref.backward()
    assert a.grad.dtype == torch.bfloat16
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)  # fp32 gradients rounded to bf16 the same way


def test_all_masked_and_no_grad_evaluation():
    logits, labels = _case()
    nll, n = token_nll(logits, torch.full_like(labels, -100), chunk_rows=4)
    assert float(nll) == 0.0 and int(n) == 0
    with torch.no_grad():
        nll, _ = token_nll(logits, labels, chunk_rows=4)
    assert float(nll) == pytest.approx(float(plain_token_nll(logits, labels)[0]), rel=1e-6)


def test_chunks_hold_a_bounded_number_of_fp32_values():
    assert loss_chunk_rows(151_936) == 220 and loss_chunk_rows(32_000) == 1048
    assert loss_chunk_rows(10**9) == 1  # never zero rows


def _saved_bytes(loss_fn, logits, labels) -> int:
    """Bytes the autograd graph of ``loss_fn`` keeps for its backward, besides the logits themselves."""
    seen, total = {logits.untyped_storage().data_ptr()}, 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(logits, labels)
    return total


def test_the_backward_keeps_no_fp32_copy_of_the_logits():
    logits, labels = _case(batch=3, seq=64, vocab=500, dtype=torch.bfloat16)
    logits.requires_grad_()
    fp32_logits = 3 * 63 * 500 * 4  # the positions that predict a token
    plain = _saved_bytes(plain_token_nll, logits, labels)
    chunked = _saved_bytes(lambda x, y: token_nll(x, y, chunk_rows=16), logits, labels)
    assert plain >= fp32_logits  # the fp32 log-softmax of every position
    assert chunked <= 3 * 64 * (4 + 8)  # a log-sum-exp (fp32) and a target (int64) per position, nothing else
