"""GEGLU: bembed's fused kernel vs eager `gelu(a) * b` vs torch.compile of the same, forward and
forward+backward. Memory-bound, so bandwidth = the minimum bytes each direction must move
(forward reads 2I and writes I per row; backward reads I + 2I and writes 2I)."""

import pytest
import torch

import bembed_ext
from conftest import rate, sync

CPU_SHAPE = (16384, 2 * 3072)
CUDA_SHAPES = [(65536, 2 * 3072), (262144, 2 * 3072)]
IMPLS = ["bembed", "eager", "compile"]

_compiled = {}


def _fn(impl):
    if impl == "bembed":
        return bembed_ext.geglu
    if impl == "eager":
        return bembed_ext.reference.geglu
    if impl not in _compiled:
        _compiled[impl] = torch.compile(bembed_ext.reference.geglu, fullgraph=True)
    return _compiled[impl]


def _cases():
    cases = [pytest.param("cpu", CPU_SHAPE, torch.float32, id="cpu-fp32-16384x6144")]
    for shape in CUDA_SHAPES:
        cases.append(pytest.param("cuda", shape, torch.bfloat16, id=f"cuda-bf16-{shape[0]}x{shape[1]}",
                                  marks=pytest.mark.cuda))
    return cases


def _bytes(shape, dtype, backward):
    rows, two_i = shape
    elements = rows * 1.5 * two_i  # forward: read x (2I), write y (I)
    if backward:
        elements += rows * 2.5 * two_i  # backward: read grad (I) and x (2I), write dx (2I)
    return elements * torch.finfo(dtype).bits / 8


@pytest.mark.parametrize("device, shape, dtype", _cases())
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
def test_geglu(benchmark, record, device, shape, dtype, impl, direction):
    fn = _fn(impl)
    torch.manual_seed(shape[0] + shape[1])  # every implementation, the same inputs
    x = torch.randn(shape, device=device, dtype=dtype)
    grad = torch.randn(shape[0], shape[1] // 2, device=device, dtype=dtype)
    head = x[:64].detach().double().requires_grad_()
    expected = bembed_ext.reference.geglu(head)
    got_x = x[:64].detach().requires_grad_()
    got = fn(got_x)
    torch.testing.assert_close(got.double(), expected, rtol=2e-2, atol=2e-2)
    if direction == "fwd+bwd":  # the timed backward too
        expected.backward(grad[:64].double())
        got.backward(grad[:64])
        torch.testing.assert_close(got_x.grad.double(), head.grad, rtol=2e-2, atol=2e-2)

    if direction == "fwd":
        def step():
            fn(x)
            sync(device)
    else:
        x.requires_grad_()

        def step():
            x.grad = None
            fn(x).backward(grad)
            sync(device)

    for _ in range(2):  # warm-up (and compile) outside the timed rounds
        step()
    benchmark.pedantic(step, rounds=7 if device == "cpu" else 30, iterations=1)
    nbytes = _bytes(shape, dtype, direction == "fwd+bwd")
    record(benchmark, op="geglu", case=f"{direction} {device} {str(dtype)[6:]} {shape[0]}x{shape[1]}", impl=impl,
           baseline=impl == "eager", gbytes_per_s=rate(benchmark, nbytes / 1e9))


@pytest.mark.cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=[f"{r}x{c}" for r, c in CUDA_SHAPES])
def test_copy_bandwidth(benchmark, record, shape):
    """The same-run bandwidth reference: a device-to-device copy moving as many bytes as GEGLU's forward."""
    src = torch.randn(int(shape[0] * shape[1] * 0.75), device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)

    def step():
        dst.copy_(src)
        sync("cuda")

    step()
    benchmark.pedantic(step, rounds=30, iterations=1)
    # In the GEGLU forward's group (same case label), so the table shows the bandwidth it reaches beside them.
    record(benchmark, op="geglu", case=f"fwd cuda bfloat16 {shape[0]}x{shape[1]}", impl="device-to-device copy",
           baseline=False, gbytes_per_s=rate(benchmark, 2 * src.numel() * 2 / 1e9))
