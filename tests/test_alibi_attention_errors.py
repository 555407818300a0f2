"""ALiBi attention's bad input: every wrong shape, dtype, device, mask, slope and cu_seqlens names its argument,
in forward and backward, the same way in the kernels and the reference; cu_seqlens is checked again after an
in-place write."""

import math

import pytest
import torch

import bembed_ext

attention = bembed_ext.alibi_attention
attention_varlen = bembed_ext.alibi_attention_varlen
ops = torch.ops.bembed


def _qkv(shape, dtype, spread=1.0):
    return [torch.randn(shape, dtype=dtype) * spread for _ in range(3)]


def _bad(**changes):
    args = {"q": torch.randn(2, 5, 3, 8), "k": torch.randn(2, 5, 3, 8), "v": torch.randn(2, 5, 3, 8),
            "alibi_slopes": bembed_ext.alibi_slopes(3), "key_padding_mask": None}
    args.update(changes)
    return lambda: attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("alibi_slopes"), **args)


def _bad_varlen(cu=(0, 2, 5), **changes):
    args = {"q": torch.randn(5, 3, 8), "k": torch.randn(5, 3, 8), "v": torch.randn(5, 3, 8),
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32), "max_seqlen": 3,
            "alibi_slopes": bembed_ext.alibi_slopes(3)}
    args.update(changes)
    return lambda: attention_varlen(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("cu_seqlens"),
                                    args.pop("max_seqlen"), args.pop("alibi_slopes"), **args)


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (_bad(q=torch.randn(2, 5, 24)), ValueError, "'q' must be 4-D"),
        (_bad(q=torch.tensor(1.0)), ValueError, "'q' must be 4-D"),
        (_bad(q=torch.tensor(1.0), impl="reference"), ValueError, "'q' must be 4-D"),
        (_bad(k=torch.randn(2, 6, 3, 8)), ValueError, "'k' must have the shape of 'q'"),
        (_bad(v=torch.randn(2, 5, 3, 4)), ValueError, "'v' must have the shape of 'q'"),
        (_bad(k=torch.randn(2, 5, 3, 8).double()), TypeError, "'k' has dtype"),
        (_bad(q=torch.ones(2, 5, 3, 8, dtype=torch.int32), k=torch.ones(2, 5, 3, 8, dtype=torch.int32),
              v=torch.ones(2, 5, 3, 8, dtype=torch.int32)), TypeError, "'q' must have dtype"),
        (_bad(q=torch.randn(2, 5, 3, 300), k=torch.randn(2, 5, 3, 300), v=torch.randn(2, 5, 3, 300)), ValueError,
         "head dim 300"),
        (_bad(alibi_slopes=torch.ones(4)), ValueError, "'alibi_slopes' must have shape"),
        (_bad(alibi_slopes=torch.ones(3, 3)), ValueError, "'alibi_slopes' must have shape"),
        (_bad(alibi_slopes=torch.ones(3, dtype=torch.float64)), TypeError, "'alibi_slopes' must have dtype"),
        (_bad(key_padding_mask=torch.ones(2, 5)), TypeError, "'key_padding_mask' must have dtype"),
        (_bad(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, "'key_padding_mask' must have shape"),
        (_bad(q=[1.0]), TypeError, "'q' must be a torch.Tensor"),
        (_bad(softmax_scale="0.1"), TypeError, "'softmax_scale' must be a float"),
        (_bad(softmax_scale=math.inf), ValueError, "'softmax_scale' must be finite"),
        (_bad(impl="fast"), ValueError, "impl must be one of"),
        (_bad_varlen(q=torch.randn(1, 5, 3, 8)), ValueError, "'q' must be 3-D"),
        (_bad_varlen(q=torch.tensor(1.0)), ValueError, "'q' must be 3-D"),
        (_bad_varlen(cu=(0, 4, 2, 5)), ValueError, "'cu_seqlens' must be non-decreasing"),
        (_bad_varlen(cu=(0, 2, 4)), ValueError, "'cu_seqlens' must end at the number of tokens"),
        (_bad_varlen(cu=(1, 5)), ValueError, "'cu_seqlens' must start at 0"),
        (_bad_varlen(cu_seqlens=torch.tensor([0, 5])), TypeError, "'cu_seqlens' must have dtype"),
        (_bad_varlen(cu_seqlens=torch.tensor([[0, 5]], dtype=torch.int32)), ValueError, "'cu_seqlens' must be 1-D"),
        (_bad_varlen(max_seqlen=-1), ValueError, "'max_seqlen' must be ≥ 0"),
        (_bad_varlen(max_seqlen=2.5), TypeError, "'max_seqlen' must be an int"),
        (_bad_varlen(alibi_slopes=torch.ones(3, 3)), ValueError, "'alibi_slopes' must have shape"),
        # the op's own check: the function hands cu_seqlens over unchecked (read out of bounds without it)
        (_bad_varlen(q=torch.randn(0, 3, 8), k=torch.randn(0, 3, 8), v=torch.randn(0, 3, 8), max_seqlen=0,
                     cu_seqlens=torch.zeros(0, dtype=torch.int32)), ValueError,
         "'cu_seqlens' must hold at least one offset"),
        (lambda: bembed_ext.alibi_slopes(0), ValueError, "'num_heads' must be positive"),
        (lambda: bembed_ext.alibi_slopes(2.0), TypeError, "'num_heads' must be an int"),
    ],
)
def test_bad_input_errors_name_the_argument(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


@pytest.mark.parametrize(
    "maker, changes, error, fragment",
    [
        (_bad, dict(k=torch.randn(2, 6, 3, 8)), ValueError, "'k' must have the shape of 'q'"),
        (_bad, dict(v=torch.randn(2, 5, 3, 4)), ValueError, "'v' must have the shape of 'q'"),
        (_bad, dict(k=torch.randn(2, 5, 3, 8).double()), TypeError, "'k' has dtype"),
        (_bad, dict(alibi_slopes=torch.ones(3, 3)), ValueError, "'alibi_slopes' must have shape"),
        (_bad, dict(key_padding_mask=torch.ones(2, 5)), TypeError, "'key_padding_mask' must have dtype"),
        (_bad, dict(key_padding_mask=torch.ones(1, 5, dtype=torch.bool)), ValueError,
         "'key_padding_mask' must have shape"),
        (_bad, dict(q=None), TypeError, "'q' must be a torch.Tensor"),
        (_bad_varlen, dict(cu=(0, 4, 2, 5)), ValueError, "'cu_seqlens' must be non-decreasing"),
        # decreasing at the last pair only, ending at T: the first sequence reaches 2 tokens past q, k, v
        (_bad_varlen, dict(cu=(0, 7, 5)), ValueError, "'cu_seqlens' must be non-decreasing"),
        (_bad_varlen, dict(cu=(0, 2, 4)), ValueError, "'cu_seqlens' must end at the number of tokens"),
        (_bad_varlen, dict(cu=(1, 5)), ValueError, "'cu_seqlens' must start at 0"),
        (_bad_varlen, dict(cu_seqlens=torch.tensor([0, 5])), TypeError, "'cu_seqlens' must have dtype"),
        (_bad_varlen, dict(cu_seqlens=None), TypeError, "'cu_seqlens' must be a torch.Tensor"),
        (_bad_varlen, dict(max_seqlen=-1), ValueError, "'max_seqlen' must be ≥ 0"),
        (_bad_varlen, dict(alibi_slopes=torch.ones(3, 3)), ValueError, "'alibi_slopes' must have shape"),
        # (B, H) slopes with the batch right but not the heads: read as slopes of the wrong heads
        (_bad, dict(alibi_slopes=torch.ones(2, 4)), ValueError, "'alibi_slopes' must have shape"),
        (_bad_varlen, dict(alibi_slopes=torch.ones(2, 4)), ValueError, "'alibi_slopes' must have shape"),
    ],
)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_both_implementations_refuse_the_same_arguments(maker, changes, error, fragment, impl):
    """The reference has no C++ side; it returned wrongly shaped results for some of these (a cu_seqlens
    ending short of T, a (1, L) mask broadcast over the batch)."""
    with pytest.raises(error, match=fragment):
        maker(**changes, impl=impl)()


def test_bad_backward_inputs_name_the_argument():
    q, k, v = _qkv((2, 5, 3, 8), torch.float32)
    out, lse = ops.alibi_attention_fwd(q, k, v, None, None, 0.3)
    with pytest.raises(ValueError, match="'grad_out' must have the shape"):
        ops.alibi_attention_bwd(out[:, :4], q, k, v, out, lse, None, None, 0.3)
    with pytest.raises(ValueError, match="'lse' must have shape"):
        ops.alibi_attention_bwd(out, q, k, v, out, lse[:, :2], None, None, 0.3)
    with pytest.raises(TypeError, match="'lse' must have dtype"):
        ops.alibi_attention_bwd(out, q, k, v, out, lse.double(), None, None, 0.3)
    with pytest.raises(TypeError, match="'out' has dtype"):
        ops.alibi_attention_bwd(out, q, k, v, out.double(), lse, None, None, 0.3)
    with pytest.raises(ValueError, match="'out' must have the shape of 'q'"):  # delta = Σ dO·O read past out
        ops.alibi_attention_bwd(out, q, k, v, out[:, :4], lse, None, None, 0.3)
    with pytest.raises(TypeError, match="'grad_out' has dtype"):
        ops.alibi_attention_bwd(out.double(), q, k, v, out, lse, None, None, 0.3)
    packed = q[0]
    for cu_seqlens, fragment in (([0, 7, 5], "must be non-decreasing"), ([], "must hold at least one offset")):
        with pytest.raises(ValueError, match=f"'cu_seqlens' {fragment}"):
            ops.alibi_attention_varlen_bwd(packed, packed, packed, packed, packed, torch.zeros(3, 5),
                                           torch.tensor(cu_seqlens, dtype=torch.int32), 7, None, 0.3)



# The values of cu_seqlens are checked once per live tensor (a device-to-host sync on CUDA): a tensor seen
# again unchanged skips the check, so every way of changing it must still be caught.
def _varlen_call(cu_seqlens, tokens=5):
    q, k, v = _qkv((tokens, 3, 8), torch.float32)
    return ops.alibi_attention_varlen_fwd(q, k, v, cu_seqlens, 3, bembed_ext.alibi_slopes(3), 0.3)


def test_cu_seqlens_checked_again_after_an_in_place_write():
    cu_seqlens = torch.tensor([0, 2, 5], dtype=torch.int32)
    _varlen_call(cu_seqlens)
    _varlen_call(cu_seqlens)  # the same tensor again: still accepted
    cu_seqlens[2] = 4  # bumps the version counter
    with pytest.raises(ValueError, match="'cu_seqlens' must end at the number of tokens"):
        _varlen_call(cu_seqlens)
    cu_seqlens[2] = 5
    _varlen_call(cu_seqlens)
    cu_seqlens[1:2].fill_(6)  # through a view: views share the version counter
    with pytest.raises(ValueError, match="'cu_seqlens' must be non-decreasing"):
        _varlen_call(cu_seqlens)


def test_cu_seqlens_checked_against_each_token_count():
    cu_seqlens = torch.tensor([0, 2, 5], dtype=torch.int32)
    _varlen_call(cu_seqlens)
    with pytest.raises(ValueError, match="'cu_seqlens' must end at the number of tokens"):
        _varlen_call(cu_seqlens, tokens=6)


def test_cu_seqlens_new_tensors_are_checked():
    for _ in range(5):  # a freed tensor's address may be reused by the next one
        _varlen_call(torch.tensor([0, 2, 5], dtype=torch.int32))
        with pytest.raises(ValueError, match="'cu_seqlens' must start at 0"):
            _varlen_call(torch.tensor([1, 2, 5], dtype=torch.int32))


def test_cu_seqlens_inference_tensors_are_checked_every_call():
    with torch.inference_mode():  # inference tensors have no version counter
        cu_seqlens = torch.tensor([0, 2, 5], dtype=torch.int32)
        _varlen_call(cu_seqlens)
        cu_seqlens[2] = 4
        with pytest.raises(ValueError, match="'cu_seqlens' must end at the number of tokens"):
            _varlen_call(cu_seqlens)


def test_cu_seqlens_checked_in_backward_after_an_in_place_write():
    cu_seqlens = torch.tensor([0, 2, 5], dtype=torch.int32)
    q, k, v = _qkv((5, 3, 8), torch.float32)
    out, lse = ops.alibi_attention_varlen_fwd(q, k, v, cu_seqlens, 3, None, 0.3)
    ops.alibi_attention_varlen_bwd(out, q, k, v, out, lse, cu_seqlens, 3, None, 0.3)
    cu_seqlens[0] = 1
    with pytest.raises(ValueError, match="'cu_seqlens' must start at 0"):
        ops.alibi_attention_varlen_bwd(out, q, k, v, out, lse, cu_seqlens, 3, None, 0.3)

@pytest.mark.cuda
def test_mixed_devices_name_the_argument():
    q = torch.randn(2, 5, 3, 8, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="'k' is on"):
        ops.alibi_attention_fwd(q, q.cpu(), q, None, None, 0.3)


def test_a_meta_tensor_beside_cpu_ones_is_refused_not_answered_with_garbage():
    """A call mixing meta and cpu tensors dispatches to the fakes, which returned an uninitialised cpu tensor
    (NaN, 4e36) without the kernel's device check (a slopes buffer left on meta by deferred init)."""
    q, cu, slopes = torch.randn(1, 40, 3, 8), torch.tensor([0, 17, 40], dtype=torch.int32), bembed_ext.alibi_slopes(3)
    with pytest.raises(ValueError, match="argument 'alibi_slopes' is on meta but 'q' is on cpu"):
        bembed_ext.alibi_attention(q, q, q, slopes.to("meta"))
    with pytest.raises(ValueError, match="argument 'k' is on meta"):
        bembed_ext.alibi_attention(q, q.to("meta"), q, slopes)
    with pytest.raises(ValueError, match="argument 'cu_seqlens' is on meta"):
        bembed_ext.alibi_attention_varlen(q[0], q[0], q[0], cu.to("meta"), 23, slopes)
    out, lse = ops.alibi_attention_fwd(q, q, q, None, slopes, 0.3)
    with pytest.raises(ValueError, match="argument 'grad_out' is on meta"):
        ops.alibi_attention_bwd(out.to("meta"), q, q, q, out, lse, None, slopes, 0.3)
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="argument 'grad_out' is on meta"):
        torch.ops.bembed.geglu_backward(torch.randn(4, 3, device="meta"), x)
    queries = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    with pytest.raises(ValueError, match="argument 'documents' is on meta"):
        torch.ops.bembed.contrastive_loss_fwd(queries, queries.to("meta"), 0.05, True, 1, 0)
    loss, row_stats, col_stats, positive_grad = torch.ops.bembed.contrastive_loss_fwd(queries, queries, 0.05, True, 1, 0)
    with pytest.raises(ValueError, match="argument 'row_stats' is on meta"):
        torch.ops.bembed.contrastive_loss_bwd(torch.ones(()), queries, queries, row_stats.to("meta"), col_stats,
                                              positive_grad, 0.05, True, 1, 0)


@pytest.mark.parametrize("impl", [None, "reference"])
def test_a_max_seqlen_beyond_int64_is_a_value_error(impl):
    """The op takes an int64; the reference path, which has no op, took 2**63 (switching implementations must
    not change what is an error)."""
    q, cu = torch.randn(5, 2, 8), torch.tensor([0, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="argument 'max_seqlen' must be below 2\\*\\*63"):
        bembed_ext.alibi_attention_varlen(q, q, q, cu, 2**63, None, impl=impl)
    for negative in (-1, -2**70):
        with pytest.raises(ValueError, match="argument 'max_seqlen' must be ≥ 0"):
            bembed_ext.alibi_attention_varlen(q, q, q, cu, negative, None, impl=impl)


@pytest.mark.parametrize("write", ["data", "numpy"])
def test_cpu_cu_seqlens_written_behind_the_version_counter_is_still_checked(write):
    """Writes through `.data` or a numpy view leave the version counter alone, so the CUDA path's cache cannot
    see them; the CPU kernels check every call instead (this read out of bounds and crashed)."""
    cu_seqlens = torch.tensor([0, 2, 5], dtype=torch.int32)
    _varlen_call(cu_seqlens)
    if write == "data":
        cu_seqlens.data[1] = 1 << 30
    else:
        cu_seqlens.numpy()[1] = 1 << 30
    with pytest.raises(ValueError, match="'cu_seqlens' must be non-decreasing"):
        _varlen_call(cu_seqlens)
    bwd_args = (torch.randn(5, 3, 8),) * 5 + (torch.zeros(3, 5),)
    with pytest.raises(ValueError, match="'cu_seqlens' must be non-decreasing"):
        ops.alibi_attention_varlen_bwd(*bwd_args, cu_seqlens, 3, bembed_ext.alibi_slopes(3), 0.3)
