"""GPU tests (skipped without a CUDA GPU): all 2^32 inputs on the device against the host
build, and the NVFP4 quantisation kernel against the numpy reference of vLLM's algorithm."""

from __future__ import annotations

from typing import Any

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("ml_dtypes")
torch = pytest.importorskip("torch", reason="torch is not installed (GPU tests need it)")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to torch", allow_module_level=True)

from tests.kernels import nvfp4_reference as ref  # noqa: E402
from turbo import kernels  # noqa: E402
from turbo.errors import UsageError  # noqa: E402

pytestmark = pytest.mark.gpu


def test_device_exhaustive_matches_host() -> None:
    major, minor = torch.cuda.get_device_capability()
    report = kernels.run_probe(kernels.probe_plan(kernels.arch_for(f"{major}.{minor}")))
    print("\n" + kernels.render_probe(report))
    assert report["device_sw_vs_host_mismatches"] == 0
    assert report["cuda_vs_sw_nonnan_mismatches"] == 0
    assert report["api_mismatches"] == 0
    # NVIDIA's conversion (emulation or instruction) gives +6 for every NaN: our policy.
    assert report["cuda_nan_codes"] == {"0x7": 2 * ((1 << 23) - 1)}
    if report["hw_compiled"]:
        assert report["hw_vs_sw_nonnan_mismatches"] == 0
    assert report["exit_code"] == 0


@pytest.fixture(scope="module")
def ext() -> Any:
    return kernels.load_quant_extension()


def _device_rcp(ext: Any) -> ref.Rcp:
    def rcp(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        return ext.rcp_approx(t).cpu().numpy()

    return rcp


def _make(case: str, rows: int, cols: int, dtype: Any, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((rows, cols), generator=g, dtype=torch.float32)
    x *= torch.exp(torch.randn((rows, 1), generator=g) * 3)  # rows of very different scale
    big = 60000.0 if dtype == torch.float16 else 1e37
    if case in ("specials", "all"):
        x[0, :] = 0.0  # a zero row
        x[1 % rows, :16] = 0.0  # a block of zeros
        x[2 % rows, 3] = big  # a huge value beside ordinary ones
        x[3 % rows, 5] = float("nan")  # NaN in an ordinary block
        x[4 % rows, 16:32] = float("nan") if cols >= 32 else x[4 % rows, 16:32]  # all-NaN block
        x[5 % rows, 7] = float("inf")
        x[6 % rows, 9] = -float("inf")
        x[7 % rows, 0:16] = -0.0
        x[8 % rows, :] = 1e-30  # subnormal in bf16 territory / zero in fp16
    return x.to(dtype)


SHAPES = [(1, 16), (130, 48), (257, 80), (128, 64), (300, 1040), (33, 4112)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
@pytest.mark.parametrize("case", ["random", "all"])
@pytest.mark.parametrize("gs_kind", ["calibrated", "one"])
@pytest.mark.parametrize("layout", sorted(kernels.LAYOUTS))
def test_quant_matches_reference(ext: Any, dtype: str, shape: tuple[int, int], case: str,
                                 gs_kind: str, layout: str) -> None:
    tdtype = getattr(torch, dtype)
    rows, cols = shape
    x = _make(case, rows, cols, tdtype, seed=rows * 7919 + cols)
    finite = x.float()[torch.isfinite(x.float())].abs()
    amax = float(finite.max()) if finite.numel() else 1.0
    gs = 448.0 * 6.0 / max(amax, 1e-30) if gs_kind == "calibrated" else 1.0
    gs = float(np.float32(gs))
    q = kernels.nvfp4_quantize(x.cuda(), torch.tensor([gs]), ext=ext, layout=layout)
    xs = x.float().numpy()
    rcp = _device_rcp(ext)
    want_data, want_swz, want_lin = ref.quantize(xs, gs, rcp)

    got_lin = q.sf_linear.cpu().numpy()
    got_swz = q.sf_swizzled.cpu().numpy()
    got_data = q.data.cpu().numpy()
    # Scales: exact (same instruction for the approximate reciprocal).
    np.testing.assert_array_equal(got_lin, want_lin)
    np.testing.assert_array_equal(got_swz, want_swz)
    # Data given the kernel's own scales: exact.
    given = ref.pack(ref.quantize_codes(xs, got_lin, gs, rcp))
    np.testing.assert_array_equal(got_data, given)
    np.testing.assert_array_equal(got_data, want_data)


def test_rcp_approx_differs_from_exact_somewhere(ext: Any) -> None:
    """Why the reference takes the GPU's reciprocal: rcp.approx is not correctly rounded."""
    x = np.random.default_rng(0).uniform(1e-3, 1e3, 1 << 20).astype(np.float32)
    dev = _device_rcp(ext)(x)
    exact = ref.rcp_exact(x)
    diff = dev != exact
    print(f"\nrcp.approx.ftz differs from 1/x (fp32 RN) on {diff.mean():.2%} of 2^20 inputs")
    ulps = np.abs(dev.view(np.int32) - exact.view(np.int32))
    r6 = _device_rcp(ext)(np.array([6.0], dtype=np.float32))[0]
    print(f"rcp.approx.ftz(6) at run time: {r6.view(np.uint32):#x} (folded constant: 0x3e2aaaab)")
    assert ulps.max() <= 2  # PTX: rcp.approx.ftz.f32 max relative error 2^-23


def test_swizzled_padding_is_zero(ext: Any) -> None:
    x = torch.randn((130, 48), dtype=torch.bfloat16) + 3
    q = kernels.nvfp4_quantize(x.cuda(), torch.tensor([1.0]), ext=ext)
    swz = q.sf_swizzled.cpu().numpy()
    assert swz.shape == (256, 4)
    assert (ref.swizzle(q.sf_linear.cpu().numpy()) == swz).all()
    assert swz.reshape(-1).astype(bool).sum() == 130 * 3  # every real scale nonzero, pads zero


@pytest.mark.parametrize("variant", ["chain", "cuda", "none"])
def test_comparison_variants(ext: Any, variant: str) -> None:
    """The benchmark's other conversions: chain and CUDA agree with the reference on non-NaN
    data (they differ on NaN only); "none" writes something else entirely."""
    x = _make("random", 257, 80, torch.bfloat16, seed=5)
    want = kernels.nvfp4_quantize(x.cuda(), torch.tensor([1.0]), ext=ext)
    got = kernels.nvfp4_quantize(x.cuda(), torch.tensor([1.0]), ext=ext, variant=variant)
    assert torch.equal(got.sf_linear, want.sf_linear)
    assert torch.equal(got.data, want.data) is (variant != "none")


def test_bad_shape_is_one_clear_error(ext: Any) -> None:
    with pytest.raises(UsageError, match="multiple of 16"):
        kernels.nvfp4_quantize(torch.zeros((4, 24), dtype=torch.bfloat16, device="cuda"),
                               torch.tensor([1.0]), ext=ext)
