"""Golden and property checks for the noise schedule and DDPM/DDIM maths (tiny tensors)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from medhdiff.diffusion import ModelConfig, NetworkConfig, NoiseSchedule, ScheduleConfig

PREDICTIONS = ["epsilon", "v"]


def sched(prediction: str = "epsilon", **kw) -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig(prediction=prediction, **kw))


def oracle(s: NoiseSchedule, x0: torch.Tensor):
    """A perfect model for data concentrated on x0: returns the true eps (or v) of x_t."""
    return lambda x, t: s.output_for_x0(x, x0, t)


# ----------------------------------------------------------------------------- tables
@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_alpha_bar_monotone_in_unit_interval(kind):
    s = sched(beta_schedule=kind, beta_end=0.012 if kind == "scaled_linear" else 0.02, beta_start=8.5e-4 if kind == "scaled_linear" else 1e-4)
    ab = s.alpha_bar(torch.arange(1000))
    assert ab.dtype == torch.float64
    assert bool((ab > 0).all()) and bool((ab < 1).all())
    assert bool((ab[1:] < ab[:-1]).all())
    sig = s.sigma_ratio(torch.arange(1000))
    assert bool((sig[1:] > sig[:-1]).all())
    assert float(s.alpha_bar(-1)) == 1.0


def test_linear_golden_numbers():
    s = sched()
    T, b0, b1 = 1000, 1e-4, 0.02

    def ab_closed(t):  # prod_{k<=t} (1 - beta_k), beta_k linear in k
        return math.exp(math.fsum(math.log1p(-(b0 + k * (b1 - b0) / (T - 1))) for k in range(t + 1)))

    assert float(s.alpha_bar(0)) == pytest.approx(0.9999, abs=1e-15)
    for t in (0, 1, 499, 999):
        assert float(s.alpha_bar(t)) == pytest.approx(ab_closed(t), rel=1e-12)
    # the widely quoted DDPM value alphas_cumprod[-1] ~= 4.036e-05
    assert float(s.alpha_bar(999)) == pytest.approx(4.036e-05, rel=1e-3)
    assert float(s.sigma_ratio(499)) == pytest.approx(math.sqrt((1 - ab_closed(499)) / ab_closed(499)), rel=1e-12)


def test_scaled_linear_and_cosine_golden():
    s = sched(beta_schedule="scaled_linear", beta_start=8.5e-4, beta_end=0.012)
    beta = lambda k: (math.sqrt(8.5e-4) + k * (math.sqrt(0.012) - math.sqrt(8.5e-4)) / 999) ** 2  # noqa: E731
    assert float(s.betas[0]) == pytest.approx(8.5e-4, rel=1e-12)
    assert float(s.betas[500]) == pytest.approx(beta(500), rel=1e-12)
    c = sched(beta_schedule="cosine")
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 250, 500):
        assert float(c.alpha_bar(t)) == pytest.approx(f(t + 1) / f(0), rel=1e-9)


# ------------------------------------------------------------------ forward process
def test_add_noise_moments_match_closed_form():
    s = sched()
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    n = 200_000
    for t in (10, 400, 900):
        noise = torch.randn(n, 4, generator=g, dtype=torch.float64)
        xt = s.add_noise(x0.expand(n, 4), noise, torch.full((n,), t))
        ab = float(s.alpha_bar(t))
        se = math.sqrt((1 - ab) / n)
        assert torch.allclose(xt.mean(0), math.sqrt(ab) * x0, atol=5 * se)
        assert torch.allclose(xt.var(0), torch.full((4,), 1 - ab, dtype=torch.float64), rtol=0.02)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_predict_x0_and_eps_invert_add_noise(prediction):
    s = sched(prediction)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 1, 4, 4, 4, generator=g)
    noise = torch.randn(3, 1, 4, 4, 4, generator=g)
    t = torch.tensor([0, 500, 999])
    xt = s.add_noise(x0, noise, t)
    out = s.target(x0, noise, t)
    assert xt.dtype == torch.float32
    torch.testing.assert_close(s.predict_x0(xt, out, t), x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(s.predict_eps(xt, out, t), noise, atol=1e-5, rtol=0)
    # float64 inputs: exact to round-off
    x64, n64 = x0.double(), noise.double()
    xt64 = s.add_noise(x64, n64, t)
    torch.testing.assert_close(s.predict_x0(xt64, s.target(x64, n64, t), t), x64, atol=1e-9, rtol=0)


def test_velocity_definition():
    s = sched("v")
    x0, noise = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    t = 321
    ab = float(s.alpha_bar(t))
    torch.testing.assert_close(s.velocity(x0, noise, t), math.sqrt(ab) * noise - math.sqrt(1 - ab) * x0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_output_for_x0_round_trips(prediction):
    s = sched(prediction)
    x0 = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([7, 640])
    xt = s.add_noise(x0, noise, t)
    out = s.output_for_x0(xt, x0, t)
    torch.testing.assert_close(out, s.target(x0, noise, t))
    torch.testing.assert_close(s.predict_x0(xt, out, t), x0)
    # an arbitrary target x0 (not the one that made x_t) round-trips too
    other = torch.randn_like(x0)
    torch.testing.assert_close(s.predict_x0(xt, s.output_for_x0(xt, other, t), t), other)


def test_per_item_timesteps_match_scalar_calls():
    s = sched("v")
    x0, noise = torch.randn(3, 1, 2, 2, 2), torch.randn(3, 1, 2, 2, 2)
    t = torch.tensor([3, 300, 998])
    batched = s.add_noise(x0, noise, t)
    for i in range(3):
        torch.testing.assert_close(batched[i], s.add_noise(x0[i], noise[i], int(t[i])))
    with pytest.raises(ValueError):
        s.add_noise(x0, noise, 1000)
    with pytest.raises(TypeError):
        s.add_noise(x0, noise, torch.tensor([1.5, 2.0, 3.0]))


# ------------------------------------------------------------------------ stepping
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("t_end,steps", [(999, 50), (999, 7), (300, 12), (40, 1)])
def test_ddim_inversion_then_sampling_recovers_x0(prediction, t_end, steps):
    s = sched(prediction)
    x0 = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model = oracle(s, x0)
    xt = s.ddim_invert(model, x0, t_end, steps)
    assert not torch.allclose(xt, x0)
    seq = s.timesteps(t_end, steps)
    x = xt
    for i, t in enumerate(seq):
        t_prev = seq[i + 1] if i + 1 < len(seq) else -1
        x = s.ddim_step(model(x, t), t, t_prev, x)
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_from_noise_with_oracle_recovers_x0_float32(prediction):
    s = sched(prediction)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 1, 4, 4, 4, generator=g)
    x = s.add_noise(x0, torch.randn(x0.shape, generator=g), 999)
    seq = s.timesteps(999, 25)
    model = oracle(s, x0)
    for i, t in enumerate(seq):
        x = s.ddim_step(model(x, t), t, seq[i + 1] if i + 1 < len(seq) else -1, x)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=0)


def test_ddim_single_step_is_tweedie_and_clip():
    s = sched("v")
    xt, out = torch.randn(2, 1, 2, 2, 2), torch.randn(2, 1, 2, 2, 2)
    torch.testing.assert_close(s.ddim_step(out, 500, -1, xt), s.predict_x0(xt, out, 500))
    clipped = s.ddim_step(out, 500, -1, xt, clip=(-0.1, 0.1))
    assert float(clipped.abs().max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("use_ddpm", [True, False])
def test_stochastic_steps_preserve_marginals(use_ddpm):
    """x_t ~ q(x_t|x0), then one ancestral (DDPM, or DDIM eta=1) step with the oracle: x_prev ~ q(x_prev|x0)."""
    s = sched()
    g = torch.Generator().manual_seed(4)
    n, t = 100_000, 600
    t_prev = t - 1 if use_ddpm else 450
    x0 = torch.full((n,), 0.7, dtype=torch.float64)
    xt = s.add_noise(x0, torch.randn(n, generator=g, dtype=torch.float64), t)
    eps = s.output_for_x0(xt, x0, t)
    if use_ddpm:
        xp = s.ddpm_step(eps, t, xt, generator=g)
    else:
        xp = s.ddim_step(eps, t, t_prev, xt, eta=1.0, generator=g)
    ab = float(s.alpha_bar(t_prev))
    assert float(xp.mean()) == pytest.approx(math.sqrt(ab) * 0.7, abs=5 * math.sqrt((1 - ab) / n))
    assert float(xp.var()) == pytest.approx(1 - ab, rel=0.02)


def test_ddpm_posterior_closed_form_and_last_step():
    s = sched()
    t = 250
    ab, ab_p, beta = float(s.alpha_bar(t)), float(s.alpha_bar(t - 1)), float(s.betas[t])
    x0, xt = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    mean, var = s.ddpm_posterior(x0, xt, t)
    exp_mean = math.sqrt(ab_p) * beta / (1 - ab) * 1.0 + math.sqrt(1 - beta) * (1 - ab_p) / (1 - ab) * 0.3
    assert float(mean) == pytest.approx(exp_mean, rel=1e-12)
    assert float(var) == pytest.approx(beta * (1 - ab_p) / (1 - ab), rel=1e-12)
    # at t = 0 the step is deterministic and lands on the x0 estimate
    x0 = torch.randn(4, dtype=torch.float64)
    x = s.add_noise(x0, torch.randn(4, dtype=torch.float64), 0)
    torch.testing.assert_close(s.ddpm_step(s.output_for_x0(x, x0, 0), 0, x), x0)


# ------------------------------------------------------------------------ timesteps
@pytest.mark.parametrize("t_start,n", [(999, 50), (999, 1), (500, 7), (10, 30), (0, 5)])
def test_timesteps_sequence(t_start, n):
    s = sched()
    seq = s.timesteps(t_start, n)
    assert seq[0] == t_start
    assert all(a > b for a, b in zip(seq, seq[1:]))
    assert len(seq) == min(n, t_start + 1)
    assert seq[-1] >= 0
    diffs = [a - b for a, b in zip(seq, seq[1:])]
    if diffs:
        assert max(diffs) - min(diffs) <= 1  # evenly spaced
        assert seq[-1] <= max(diffs)  # the last jump to clean data is not larger than the others
    with pytest.raises(ValueError):
        s.timesteps(t_start, 0)


def test_timestep_for_sigma_inverts_sigma_ratio():
    s = sched()
    ts = torch.arange(1000)
    assert torch.equal(s.timestep_for_sigma(s.sigma_ratio(ts)), ts)
    for t in (0, 1, 123, 999):
        assert s.timestep_for_sigma(float(s.sigma_ratio(t))) == t
    assert s.timestep_for_sigma(0.0) == 0
    assert s.timestep_for_sigma(1e6) == 999
    # a noisy image y = x0 + sigma n, scaled by sqrt(ab_t), is exactly x_t at that t
    t = s.timestep_for_sigma(0.1)
    x0, n = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    y = x0 + s.sigma_ratio(t) * n
    torch.testing.assert_close(s.xt_from_noisy(y, t), s.add_noise(x0, n, t))


def test_matched_timestep_maths():
    s = sched()
    for t in (5, 100, 400, 999):
        assert s.matched_timestep(t, 1) == t
        tm = s.matched_timestep(t, 4**3)
        target = float(s.sigma_ratio(t)) / 8.0
        assert tm < t
        err = abs(math.log(float(s.sigma_ratio(tm)) / target))
        for nb in (tm - 1, tm + 1):
            if 0 <= nb < 1000:
                assert err <= abs(math.log(float(s.sigma_ratio(nb)) / target)) + 1e-12
    # pooling f^3 i.i.d. noise voxels divides its std by sqrt(f^3): check the premise empirically
    noise = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(5))
    pooled = torch.nn.functional.avg_pool3d(noise, 4)
    assert float(pooled.std()) == pytest.approx(1 / 8, rel=0.05)
    tv = torch.tensor([100, 999])
    assert torch.equal(s.matched_timestep(tv, 64), torch.tensor([s.matched_timestep(100, 64), s.matched_timestep(999, 64)]))


# --------------------------------------------------------------------------- config
def test_config_json_round_trip_and_unknown_keys():
    cfg = ModelConfig(
        schedule=ScheduleConfig(beta_schedule="cosine", prediction="v"),
        global_net=NetworkConfig(channels=(8, 16), attention_levels=(False, True), norm_num_groups=4, num_class_embeds=3),
        patch_net=NetworkConfig(channels=(8, 8), attention_levels=(False, False), norm_num_groups=4),
        patch_size=(16, 16, 16),
    )
    back = ModelConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg
    assert isinstance(back.patch_size, tuple) and isinstance(back.global_net.channels, tuple)
    with pytest.raises(ValueError, match="bogus"):
        ScheduleConfig.from_dict({"num_train_timesteps": 10, "bogus": 1})
    with pytest.raises(ValueError, match="chanels"):
        NetworkConfig.from_dict({"chanels": [8]})
    bad = dataclasses.asdict(cfg)
    bad["patch_net"]["extra"] = 1
    with pytest.raises(ValueError, match="extra"):
        ModelConfig.from_dict(bad)
    with pytest.raises(ValueError):
        ScheduleConfig(beta_schedule="quadratic")
    with pytest.raises(ValueError):
        NetworkConfig(channels=(8, 16), attention_levels=(False,))
    with pytest.raises(ValueError):
        ModelConfig(patch_size=(30, 32, 32))  # not a multiple of 4 for a 3-level patch net
    assert cfg.contrast_index("t2") == 1
