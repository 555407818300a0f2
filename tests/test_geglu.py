import pytest
import torch

import bembed_ext
from accuracy import assert_within_torch_error

geglu = bembed_ext.geglu
reference = bembed_ext.reference.geglu

SHAPES = [(1, 2), (7, 6), (97, 6144), (1025, 6), (3, 5, 24), (16,), (33, 2 * 3072)]
LOW_PRECISION = [torch.bfloat16, torch.float16]


def _forward_backward(fn, x, grad):
    x = x.detach().requires_grad_()
    y = fn(x)
    y.backward(grad)
    return y.detach(), x.grad


def _torch_vectorized(x, grad):
    """PyTorch's eager GEGLU at x's precision, through its vectorized GELU. A row of a few elements takes PyTorch's
    scalar path (std::erf, exact to an ulp); bembed's kernel, and PyTorch's for any longer row, use ATen's
    vectorized erf, whose error is absolute (~1e-7), so the tail's small Φ(a) comes out less precise (a single
    element at a ≈ −3 erred 10× PyTorch's scalar result). Each half is tiled to 64+ elements a row; the first
    copy of each is read back."""
    inner = x.shape[-1] // 2
    copies = -(-64 // inner)

    def tile(t):
        return t.repeat(*[1] * (t.dim() - 1), copies)

    y, dx = _forward_backward(reference, torch.cat([tile(half) for half in x.chunk(2, -1)], -1), tile(grad))
    return y[..., :inner], torch.cat([dx[..., :inner], dx[..., inner * copies:inner * (copies + 1)]], -1)


def _check_against_reference(x, device_grad_dtype=None):
    """Compares bembed's forward and backward with the float64 specification; at low precision the error
    must be within 2× that of PyTorch's eager computation at the same precision."""
    grad = torch.randn(*x.shape[:-1], x.shape[-1] // 2, dtype=x.dtype, device=x.device)
    ours_y, ours_dx = _forward_backward(geglu, x, grad)
    ref_y, ref_dx = _forward_backward(reference, x.double(), grad.double())
    torch_y, torch_dx = _torch_vectorized(x, grad)
    assert ours_y.dtype == x.dtype and ours_dx.dtype == x.dtype
    assert_within_torch_error(ours_y, ref_y, torch_y, what="forward")
    assert_within_torch_error(ours_dx, ref_dx, torch_dx, what="grad x")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *LOW_PRECISION])
def test_cpu_matches_reference(shape, dtype):
    _check_against_reference(torch.randn(shape, dtype=dtype) * 3)


def test_extreme_values_stay_finite():
    x = torch.tensor([[-30.0, -5.0, 0.0, 5.0, 30.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    _check_against_reference(x)


def test_gradcheck_float64():
    x = torch.randn(5, 2 * 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(geglu, (x,))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck(device):
    dtype = torch.float64 if device == "cpu" else torch.float32
    x = torch.randn(4, 3, 2 * 5, dtype=dtype, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.bembed.geglu.default, (x,))
    grad = torch.randn(4, 3, 5, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.bembed.geglu_backward.default, (grad, x.detach()))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()

    def mlp(x, weight):
        return geglu(x @ weight).sum()

    x = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(8, 2 * 4, requires_grad=True)
    compiled = torch.compile(mlp, fullgraph=True, backend=backend)
    expected = torch.autograd.grad(mlp(x, weight), (x, weight))
    got = torch.autograd.grad(compiled(x, weight), (x, weight))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


def test_non_contiguous_input_is_handled():
    base = torch.randn(2 * 6, 9)
    x = base.t()  # (9, 12), not contiguous
    assert not x.is_contiguous()
    _check_against_reference(x)


def test_differentiating_the_gradient_raises():
    """The backward kernel has no derivative: a gradient penalty must fail, not silently lose its term."""
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    y = geglu(x)
    (grad_x,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        grad_x.square().sum().backward()


@pytest.mark.parametrize("shape", [(0, 8), (4, 0), (0,)])
def test_empty_tensors(shape):
    x = torch.randn(shape, requires_grad=True)
    y = geglu(x)
    assert y.shape == (*shape[:-1], shape[-1] // 2)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_reference_switch(monkeypatch):
    x = torch.randn(3, 4, requires_grad=True)
    assert type(geglu(x, impl="reference").grad_fn).__name__ == "MulBackward0"
    assert type(geglu(x).grad_fn).__name__ != "MulBackward0"
    monkeypatch.setenv("BEMBED_REFERENCE_OPS", "1")
    assert type(geglu(x).grad_fn).__name__ == "MulBackward0"
    assert type(geglu(x, impl="kernel").grad_fn).__name__ != "MulBackward0"


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: geglu(torch.randn(3, 5)), ValueError, "'x' must have an even last dimension"),
        (lambda: geglu(torch.randn(3, 5), impl="reference"), ValueError, "'x' must have an even last dimension"),
        (lambda: torch.compile(geglu, backend="aot_eager")(torch.randn(3, 5)), ValueError,
         "'x' must have an even last dimension"),
        (lambda: geglu(torch.tensor(1.0)), ValueError, "'x' must have at least 1 dimension"),
        (lambda: geglu(torch.tensor(1.0), impl="reference"), ValueError, "'x' must have at least 1 dimension"),
        (lambda: geglu(torch.ones(2, 4, dtype=torch.int32)), TypeError, "'x' must have dtype"),
        (lambda: geglu([1.0, 2.0]), TypeError, "'x' must be a torch.Tensor"),
        (lambda: geglu(torch.randn(2, 4), impl="fast"), ValueError, "impl must be one of"),
        # the ops' own check (the function checks first): x (3, 5) was read as rows of 4
        (lambda: torch.ops.bembed.geglu(torch.randn(3, 5)), ValueError, "'x' must have an even last dimension"),
        (lambda: torch.ops.bembed.geglu_backward(torch.randn(3, 2), torch.randn(3, 5)), ValueError,
         "'x' must have an even last dimension"),
        (lambda: torch.ops.bembed.geglu_backward(torch.randn(2, 3), torch.randn(2, 4)), ValueError,
         "'grad_out' must have shape"),
        (lambda: torch.ops.bembed.geglu_backward(torch.randn(2, 2).double(), torch.randn(2, 4)), TypeError,
         "'grad_out' has dtype"),
    ],
)
def test_bad_input_errors_name_the_argument(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(1, 2), (97, 6), (1025, 2 * 3072), (3, 5, 2 * 64), (4096, 2 * 3)])
@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
def test_cuda_matches_reference(shape, dtype):
    _check_against_reference(torch.randn(shape, dtype=dtype, device="cuda") * 3)


@pytest.mark.cuda
def test_cuda_unaligned_pointer_uses_scalar_path_correctly():
    flat = torch.randn(1 + 7 * 16, device="cuda", dtype=torch.bfloat16)
    x = flat[1:].view(7, 16)  # 2-byte offset: not 16-byte aligned
    _check_against_reference(x)


@pytest.mark.cuda
def test_cuda_mixed_devices_rejected():
    x = torch.randn(2, 8, device="cuda")
    with pytest.raises(ValueError, match="'grad_out' is on"):
        torch.ops.bembed.geglu_backward(torch.randn(2, 4), x)


@pytest.mark.parametrize("mode", ["jvp", "forward_ad"])
def test_forward_mode_ad_raises_instead_of_zero_tangents(mode):
    """torch gives a custom op no forward-mode rule and returned zero (jvp) or no (forward_ad) tangents."""
    import torch.autograd.forward_ad as forward_ad

    x, tangent = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="bembed.geglu: the kernel has no forward-mode derivative"):
        if mode == "jvp":
            torch.func.jvp(bembed_ext.geglu, (x,), (tangent,))
        else:
            with forward_ad.dual_level():
                bembed_ext.geglu(forward_ad.make_dual(x, tangent))
    _, reference = torch.func.jvp(lambda a: bembed_ext.geglu(a, impl="reference"), (x,), (tangent,))
    assert reference.abs().max() > 0
