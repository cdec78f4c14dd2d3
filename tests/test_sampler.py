"""The two-stage sampler with tiny untrained networks and with oracle models (CPU, small volumes)."""

from __future__ import annotations

import math

import pytest
import torch

from medhdiff.diffusion import (
    GlobalDenoiser,
    HierarchicalSampler,
    ModelConfig,
    NetworkConfig,
    NoiseSchedule,
    PatchDenoiser,
    ScheduleConfig,
    coordinate_grid,
    downsample,
    patch_coordinates,
    required_multiple,
    upsample,
)

TINY = dict(channels=(8, 8), attention_levels=(False, False), norm_num_groups=4)


def make_cfg(prediction="epsilon", patch=16, overlap=0.5, global_classes=None) -> ModelConfig:
    return ModelConfig(
        schedule=ScheduleConfig(prediction=prediction),
        global_net=NetworkConfig(**TINY, num_class_embeds=global_classes),
        patch_net=NetworkConfig(**TINY),
        coarse_factor=4,
        patch_size=(patch, patch, patch),
        patch_overlap=overlap,
    )


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny networks gain nothing from intra-op threads, and on a busy 2-core CI box they lose a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize_zero_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """MONAI zero-initialises the output conv (and the residual convs): an untrained U-Net returns exactly 0.
    Give those parameters random values so the tests see a non-trivial, context-dependent network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in model.parameters():
            if not prm.any():
                prm.copy_(torch.randn(prm.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    cfg = make_cfg(global_classes=3)
    g = randomize_zero_init(GlobalDenoiser(cfg.global_net), 1)
    p = randomize_zero_init(PatchDenoiser(cfg.patch_net), 2)
    return cfg, g, p


class Counting(torch.nn.Module):
    """Wraps a patch model and records how many windows it saw (and which)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.windows = 0
        self.starts: set[tuple[int, ...]] = set()

    def forward(self, x, t, cond, coords, class_labels=None):
        self.calls += 1
        self.windows += x.shape[0]
        return self.inner(x, t, cond=cond, coords=coords, class_labels=class_labels)


def rand_volume(shape, seed=0):
    return torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- networks
def test_coordinate_grid_and_patch_coordinates():
    g = coordinate_grid((4, 2, 6))
    assert g.shape == (3, 4, 2, 6)
    torch.testing.assert_close(g[0, :, 0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(g[1, 0, :, 0], torch.tensor([-0.5, 0.5]))
    assert float(g.min()) > -1 and float(g.max()) < 1
    full = coordinate_grid((16, 24, 8))
    torch.testing.assert_close(patch_coordinates((16, 24, 8), (8, 4, 0), (8, 16, 8)), full[:, 8:16, 4:20, 0:8])
    # align_corners=False convention: sampling the grid with itself is the identity
    vol = torch.randn(1, 1, 4, 2, 6)
    grid = g.flip(0).permute(1, 2, 3, 0)[None]  # grid_sample wants (z, y, x) order last
    torch.testing.assert_close(torch.nn.functional.grid_sample(vol, grid, align_corners=False), vol)


@torch.no_grad()
def test_networks_shapes_and_checks(nets):
    cfg, g, p = nets
    assert required_multiple(cfg.global_net) == 2
    x = torch.randn(2, 1, 8, 8, 4)
    out = g(x, torch.tensor([1, 500]), class_labels=torch.tensor([0, 2]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="class_labels"):
        g(x, torch.tensor([1, 500]))
    with pytest.raises(ValueError, match="multiple of 2"):
        g(torch.randn(1, 1, 8, 8, 5), 3, class_labels=0)
    xp = torch.randn(2, 1, 16, 16, 16)
    coords = patch_coordinates((32, 32, 32), (0, 8, 16), (16, 16, 16))[None]
    outp = p(xp, 10, cond=torch.randn_like(xp), coords=coords)
    assert outp.shape == xp.shape and torch.isfinite(outp).all()
    assert float(outp.std()) > 1e-2  # not the zero-initialised output of an untrained MONAI U-Net
    # the output depends on the window's context (so blending overlapping windows is not trivial)
    shifted = p(xp[..., 4:12], 10, cond=torch.zeros(2, 1, 16, 16, 8), coords=coords[..., 4:12].expand(2, -1, -1, -1, -1))
    assert float((shifted - p(xp, 10, cond=torch.zeros_like(xp), coords=coords)[..., 4:12]).abs().max()) > 1e-3
    assert p.unet.conv_in.conv.in_channels == 5


# ------------------------------------------------------------------------------ sampler
def test_sample_finite_same_shape_and_masked(nets):
    cfg, g, p = nets
    sch = NoiseSchedule(cfg.schedule)
    seen = []
    sampler = HierarchicalSampler(sch, cfg, device="cpu", batch_size=3, progress=lambda *a: seen.append(a))
    x_t = rand_volume((32, 24, 24))
    mask = torch.zeros(32, 24, 24, dtype=torch.bool)
    mask[4:28, 4:20, 2:22] = True
    res = sampler.sample(g, p, x_t, t_start=300, steps=3, mask=mask, class_label=1)
    assert res.x0.shape == x_t.shape and res.x0.device.type == "cpu"
    assert res.coarse_x0.shape == (1, 1, 8, 6, 6)
    assert torch.isfinite(res.x0).all() and torch.isfinite(res.coarse_x0).all()
    assert float(res.x0[0, 0][~mask].abs().max()) == 0.0
    assert [s for s in seen if s[0] == "patch"] == [("patch", i, 3) for i in (1, 2, 3)]
    n_global = len(sch.timesteps(sch.matched_timestep(300, 64), 3))
    assert [s for s in seen if s[0] == "global"] == [("global", i, n_global) for i in range(1, n_global + 1)]
    with pytest.raises(ValueError, match="multiple of 8"):
        sampler.sample(g, p, rand_volume((32, 24, 20)), 300, 2, class_label=0)


def test_single_window_has_no_seams(nets):
    cfg, g, p = nets
    sch = NoiseSchedule(cfg.schedule)
    sampler = HierarchicalSampler(sch, cfg, batch_size=4)
    x_t = rand_volume((16, 16, 16), seed=1)
    cond = rand_volume((16, 16, 16), seed=2)
    plan = sampler.make_plan((16, 16, 16), None, "cpu")
    assert plan.num_windows == 1
    stitched = sampler.model_output(p, x_t, 400, cond, plan)
    direct = p(x_t, torch.tensor([400]), cond=cond, coords=coordinate_grid((16, 16, 16))[None])
    torch.testing.assert_close(stitched, direct, atol=1e-5, rtol=0)
    torch.testing.assert_close(sampler.tweedie(p, x_t, 400, cond), sch.predict_x0(x_t, direct, 400), atol=1e-5, rtol=0)


def test_blending_matches_monai_sliding_window_inference(nets):
    from monai.inferers import sliding_window_inference

    cfg, g, p = nets
    sch = NoiseSchedule(cfg.schedule)
    shape = (32, 24, 40)
    sampler = HierarchicalSampler(sch, cfg, batch_size=5)
    x_t, cond = rand_volume(shape, 3), rand_volume(shape, 4)
    ours = sampler.model_output(p, x_t, 250, cond, sampler.make_plan(shape, None, "cpu"))
    stacked = torch.cat([x_t, cond, coordinate_grid(shape)[None]], dim=1)
    ref = sliding_window_inference(
        stacked,
        cfg.patch_size,
        sw_batch_size=2,
        predictor=lambda w: p(w[:, :1], 250, cond=w[:, 1:2], coords=w[:, 2:]),
        overlap=cfg.patch_overlap,
        mode="gaussian",
    )
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_windows_without_brain_are_skipped(nets):
    cfg, g, p = nets
    sch = NoiseSchedule(cfg.schedule)
    counting = Counting(p)
    sampler = HierarchicalSampler(sch, cfg, batch_size=4)
    shape = (32, 32, 32)  # 16^3 windows at stride 8: 3 x 3 x 3 = 27 windows
    x_t = rand_volume(shape, 5)
    assert sampler.make_plan(shape, None, "cpu").num_windows == 27
    mask = torch.zeros(shape)
    mask[10:14, 10:14, 10:14] = 1  # inside windows starting at 0 and 8 on each axis: 2^3 = 8 windows
    plan = sampler.make_plan(shape, mask, "cpu")
    assert plan.num_active == 8
    steps = 3
    res = sampler.sample(g, counting, x_t, t_start=200, steps=steps, mask=mask, class_label=0)
    assert counting.windows == 8 * steps
    assert counting.calls == 2 * steps  # 8 windows in batches of 4
    assert float(res.x0[0, 0][mask == 0].abs().max()) == 0.0
    # voxels covered only by empty windows get the output that drives x0 to 0
    out = sampler.model_output(counting, x_t, 200, torch.zeros_like(x_t), plan)
    bg = sch.output_for_x0(x_t, torch.zeros(()), 200)
    torch.testing.assert_close(out[..., 28:, 28:, 28:], bg[..., 28:, 28:, 28:])
    torch.testing.assert_close(sch.predict_x0(x_t, out, 200)[..., 28:, 28:, 28:], torch.zeros(1, 1, 4, 4, 4), atol=1e-5, rtol=0)
    # a mask with no brain at all: the network is never called
    counting.windows = 0
    sampler.tweedie(counting, x_t, 200, torch.zeros_like(x_t), mask=torch.zeros(shape))
    assert counting.windows == 0


def test_steps_one_is_tweedie_for_both_stages(nets):
    cfg, g, p = nets
    sch = NoiseSchedule(cfg.schedule)
    sampler = HierarchicalSampler(sch, cfg, batch_size=2)
    x_t = rand_volume((24, 24, 16), 6)
    mask = torch.ones(24, 24, 16)
    mask[:4] = 0
    t = 450
    res = sampler.sample(g, p, x_t, t_start=t, steps=1, mask=mask, class_label=2)
    # stage 1: one Tweedie estimate at the matched coarse timestep
    tc = sch.matched_timestep(t, 64)
    xc = downsample(x_t, 4) * math.sqrt(float(sch.alpha_bar(tc)) / float(sch.alpha_bar(t)))
    with torch.no_grad():
        coarse = sch.predict_x0(xc, g(xc, torch.tensor([tc]), class_labels=torch.tensor([2])), tc)
    coarse = coarse * (downsample(mask[None, None], 4) > 0)
    torch.testing.assert_close(res.coarse_x0, coarse, atol=1e-5, rtol=0)
    # stage 2: one blended Tweedie estimate at t_start
    tw = sampler.tweedie(p, x_t, t, upsample(res.coarse_x0, x_t.shape[2:]), mask=mask)
    torch.testing.assert_close(res.x0, tw, atol=1e-6, rtol=0)


def test_each_timestep_is_one_full_volume_ddim_step(nets):
    cfg, g, p = nets
    sch = NoiseSchedule(cfg.schedule)
    sampler = HierarchicalSampler(sch, cfg, batch_size=4)
    shape = (32, 24, 24)
    x_t = rand_volume(shape, 10)
    res = sampler.sample(g, p, x_t, t_start=600, steps=3, class_label=0)
    cond = upsample(res.coarse_x0, shape)
    plan = sampler.make_plan(shape, None, "cpu")
    assert plan.num_windows > 1
    seq = sch.timesteps(600, 3)
    x = x_t
    for i, t in enumerate(seq):
        out = sampler.model_output(p, x, t, cond, plan)
        x = sch.ddim_step(out, t, seq[i + 1] if i + 1 < len(seq) else -1, x)
    torch.testing.assert_close(res.x0, x, atol=1e-5, rtol=0)


def test_coarse_chain_starts_at_matched_timestep(nets):
    cfg, g, p = nets
    sch = NoiseSchedule(cfg.schedule)
    calls = []

    def global_spy(x, t, class_labels=None):
        calls.append((x.clone(), t.clone()))
        return g(x, t, class_labels=class_labels)

    sampler = HierarchicalSampler(sch, cfg)
    x_t = rand_volume((16, 16, 16), 7)
    t = 800
    sampler.sample(global_spy, p, x_t, t_start=t, steps=4, class_label=0)
    tc = sch.matched_timestep(t, 64)
    assert tc < t and int(calls[0][1][0]) == tc
    assert [int(c[1][0]) for c in calls] == sch.timesteps(tc, 4)
    expected = downsample(x_t, 4) * math.sqrt(float(sch.alpha_bar(tc)) / float(sch.alpha_bar(t)))
    torch.testing.assert_close(calls[0][0], expected)
    # from noise: the coarse chain starts at t_start and is reproducible with a generator
    calls.clear()
    r1 = sampler.sample(global_spy, p, x_t, t, 2, class_label=0, generator=torch.Generator().manual_seed(1), start_from_noise=True)
    assert int(calls[0][1][0]) == t
    r2 = sampler.sample(g, p, x_t, t, 2, class_label=0, generator=torch.Generator().manual_seed(1), start_from_noise=True)
    torch.testing.assert_close(r1.x0, r2.x0)


def test_coarse_chain_same_timestep_has_the_full_noise_level(nets):
    """coarse_timestep="same": the coarse chain starts at t_start, and its start holds the noise
    level of t_start (pooling's f**1.5 reduction topped up with fresh noise), around the pooled signal."""
    cfg, g, p = nets
    sch = NoiseSchedule(cfg.schedule)
    starts = []

    def global_spy(x, t, class_labels=None):
        starts.append((x.clone(), int(t[0])))
        return g(x, t, class_labels=class_labels)

    sampler = HierarchicalSampler(sch, cfg)
    t = 500
    ab = float(sch.alpha_bar(t))
    x0 = torch.full((1, 1, 32, 32, 32), 0.7)
    x_t = sch.add_noise(x0, rand_volume((32, 32, 32), 3), t)
    sampler.sample(global_spy, p, x_t, t, 1, class_label=0, generator=torch.Generator().manual_seed(0),
                   coarse_timestep="same")
    xc, tc = starts[0]
    assert tc == t
    noise = xc - math.sqrt(ab) * 0.7
    assert abs(float(noise.mean())) < 0.15
    assert float(noise.std()) == pytest.approx(math.sqrt(1 - ab), rel=0.15)  # not sqrt(1 - ab) / 8
    with pytest.raises(ValueError, match="coarse_timestep"):
        sampler.sample(g, p, x_t, t, 1, coarse_timestep="bogus")


def test_batch_size_does_not_change_the_result(nets):
    cfg, g, p = nets
    sch = NoiseSchedule(cfg.schedule)
    x_t = rand_volume((24, 16, 32), 8)
    a = HierarchicalSampler(sch, cfg, device="cpu", batch_size=1).sample(g, p, x_t, 100, 2, class_label=1)
    b = HierarchicalSampler(sch, cfg, device=torch.device("cpu"), batch_size=7).sample(g, p, x_t, 100, 2, class_label=1)
    torch.testing.assert_close(a.x0, b.x0, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ oracle
class OraclePatch(torch.nn.Module):
    """A perfect patch model for one known volume x0: finds its window from `coords`, returns the true eps/v."""

    def __init__(self, sch, x0, expected_cond):
        super().__init__()
        self.sch, self.x0, self.expected_cond = sch, x0, expected_cond
        self.cond_err = 0.0

    def _window(self, vol, coords):
        n = vol.shape[2:]
        idx = [torch.round(((coords[k] + 1) * n[k] - 1) / 2).long() for k in range(3)]
        return vol[0, 0][idx[0], idx[1], idx[2]][None]

    def forward(self, x, t, cond, coords, class_labels=None):
        x0 = torch.stack([self._window(self.x0, c) for c in coords])
        ref = torch.stack([self._window(self.expected_cond, c) for c in coords])
        self.cond_err = max(self.cond_err, float((cond - ref).abs().max()))
        return self.sch.output_for_x0(x, x0, t)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_oracle_models_recover_x0(prediction):
    cfg = make_cfg(prediction, patch=16, overlap=0.5)
    sch = NoiseSchedule(cfg.schedule)
    shape = (40, 32, 24)
    gen = torch.Generator().manual_seed(9)
    mask = torch.zeros(1, 1, *shape)
    mask[..., 4:36, 4:28, 4:20] = 1
    x0 = torch.nn.functional.avg_pool3d(torch.randn(1, 1, *shape, generator=gen), 3, 1, 1) * 3 * mask
    x0c = downsample(x0, 4)
    cond = upsample(x0c * (downsample(mask, 4) > 0), shape)
    oracle_patch = OraclePatch(sch, x0, cond)

    def oracle_global(x, t, class_labels=None):
        return sch.output_for_x0(x, x0c, t)

    sampler = HierarchicalSampler(sch, cfg, batch_size=4)
    t = 999
    x_t = sch.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
    res = sampler.sample(oracle_global, oracle_patch, x_t, t_start=t, steps=10, mask=mask)
    torch.testing.assert_close(res.coarse_x0, x0c * (downsample(mask, 4) > 0), atol=1e-4, rtol=0)
    assert oracle_patch.cond_err < 1e-4
    torch.testing.assert_close(res.x0, x0, atol=1e-4, rtol=0)
    # a partial chain from an intermediate noise level, no mask
    x_t = sch.add_noise(x0, torch.randn(x0.shape, generator=gen), 300)
    oracle_patch.expected_cond = upsample(x0c, shape)
    res = sampler.sample(oracle_global, oracle_patch, x_t, t_start=300, steps=4)
    torch.testing.assert_close(res.x0, x0, atol=1e-4, rtol=0)
