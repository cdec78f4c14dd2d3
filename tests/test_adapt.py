"""Test-time adaptation (recorrupted-to-recorrupted) of the patch network to one noisy scan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medhdiff.diffusion import HierarchicalSampler, NoiseSchedule, PatchDenoiser
from medhdiff.io import Volume
from medhdiff.tasks import Predictor
from medhdiff.tasks.adapt import AdaptConfig, adapt_patch_model
from test_jobs_cli import invoke, scan
from test_sampler import make_cfg, rand_volume, randomize_zero_init
from test_tasks import rician

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _smooth_volume(shape=(32, 32, 32), seed=0) -> tuple[torch.Tensor, np.ndarray]:
    """A blurred random 'brain' in [0, ~1] inside an ellipsoid mask, as a (1, 1, X, Y, Z) tensor."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    mask = (grid**2).sum(0) < 0.8
    img = ndimage.gaussian_filter(rng.random(shape), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    img = np.where(mask, 0.3 + 0.7 * img, 0.0).astype(np.float32)
    return torch.from_numpy(img)[None, None], mask


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def setting():
    cfg = make_cfg(patch=16, overlap=0.25)
    sch = NoiseSchedule(cfg.schedule)
    torch.manual_seed(0)
    net = randomize_zero_init(PatchDenoiser(cfg.patch_net), 3)
    clean, mask = _smooth_volume()
    sigma = 0.1
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    noisy = noisy * torch.from_numpy(mask)
    return cfg, sch, net, clean, noisy, mask, sigma


def _tweedie_error(cfg, sch, net, clean, noisy, mask, sigma) -> float:
    t = int(sch.timestep_for_sigma(sigma))
    sampler = HierarchicalSampler(sch, cfg)
    m = torch.from_numpy(mask)
    x0 = sampler.tweedie(net, sch.xt_from_noisy(noisy, t), t, clean * 0 + clean.mean(), mask=m)
    return float(((x0 - clean)[0, 0][m] ** 2).mean())


def test_adaptation_fits_a_copy_and_lowers_the_error_against_the_clean_volume(setting):
    cfg, sch, net, clean, noisy, mask, sigma = setting
    before = _state(net)
    cond = torch.full_like(clean, float(clean.mean()))
    conf = AdaptConfig(iterations=100, batch=2, lr=3e-3)  # an untrained net learns from scratch here
    seen = []
    adapted, losses = adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), conf,
                                        progress=lambda *a: seen.append(a))
    assert adapted is not net
    for k, v in net.state_dict().items():  # the loaded model is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert any(not torch.equal(v, before[k]) for k, v in adapted.state_dict().items())
    assert not any(p.requires_grad for p in adapted.parameters()) and not adapted.training
    assert len(losses) == 100 and np.isfinite(losses).all()
    assert seen[-1] == ("adapt", 100, 100)
    # real behaviour: trained only on the noisy volume, the adapted copy denoises it better
    err_before = _tweedie_error(cfg, sch, net, clean, noisy, mask, sigma)
    err_after = _tweedie_error(cfg, sch, adapted, clean, noisy, mask, sigma)
    noisy_err = float(((noisy - clean)[0, 0][torch.from_numpy(mask)] ** 2).mean())
    assert err_after < 0.5 * err_before, (err_before, err_after)
    assert err_after < 0.7 * noisy_err, (noisy_err, err_after)


def test_adaptation_is_reproducible_and_zero_iterations_is_an_exact_copy(setting):
    cfg, sch, net, clean, noisy, mask, sigma = setting
    cond = torch.zeros_like(clean)
    conf = AdaptConfig(iterations=3, batch=2, lr=1e-3, seed=7)
    a, la = adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), conf)
    b, lb = adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), conf)
    assert la == lb
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    c, lc = adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), AdaptConfig(iterations=3, batch=2,
                                                                                             lr=1e-3, seed=8))
    assert lc != la
    z, lz = adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), AdaptConfig(iterations=0))
    assert lz == [] and z is not net
    for k, v in net.state_dict().items():
        torch.testing.assert_close(z.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="alpha"):
        adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), AdaptConfig(alpha=0))
    with pytest.raises(ValueError, match="batch"):
        adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), AdaptConfig(batch=0))
    # nothing to learn from: no noise, or no brain
    for s_, m_ in ((0.0, mask), (sigma, np.zeros_like(mask))):
        same, ls = adapt_patch_model(net, noisy, m_, cond, s_, sch, (16, 16, 16), AdaptConfig(iterations=5))
        assert ls == [] and all(torch.equal(v, net.state_dict()[k]) for k, v in same.state_dict().items())


def test_adaptation_draws_its_recorruption_from_the_given_noise_fields(setting):
    cfg, sch, net, clean, noisy, mask, sigma = setting
    cond = torch.zeros_like(clean)
    conf = AdaptConfig(iterations=2, batch=2, lr=1e-3)
    shape = tuple(clean.shape[2:])
    with pytest.raises(ValueError, match="model shape"):
        adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), conf, noise_fields=[np.zeros((4, 4, 4))])
    # zero fields: no recorruption at all, so y1 = y2 = y and the loss is the plain x0 error on the scan
    _, zero = adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), conf,
                                noise_fields=[np.zeros(shape, np.float32)])
    _, white = adapt_patch_model(net, noisy, mask, cond, sigma, sch, (16, 16, 16), conf)
    assert zero[0] < white[0], (zero, white)  # the target noise (sigma / alpha) dominates the white loss


def test_sampler_reuses_a_given_coarse_result():
    cfg = make_cfg(global_classes=None)
    from medhdiff.diffusion import GlobalDenoiser

    torch.manual_seed(0)
    g = randomize_zero_init(GlobalDenoiser(cfg.global_net), 1)
    p = randomize_zero_init(PatchDenoiser(cfg.patch_net), 2)
    sch = NoiseSchedule(cfg.schedule)
    sampler = HierarchicalSampler(sch, cfg)
    x_t = rand_volume((32, 24, 24))
    ref = sampler.sample(g, p, x_t, 200, 2)
    coarse = sampler.coarse_stage(g, x_t, 200, 2)
    torch.testing.assert_close(coarse, ref.coarse_x0, rtol=0, atol=0)

    class NoGlobal(torch.nn.Module):
        def forward(self, *a, **k):
            raise AssertionError("stage 1 must be skipped")

    again = sampler.sample(NoGlobal(), p, x_t, 200, 2, coarse_x0=coarse)
    torch.testing.assert_close(again.x0, ref.x0, rtol=0, atol=0)
    with pytest.raises(ValueError, match="coarse_x0 has shape"):
        sampler.sample(g, p, x_t, 200, 2, coarse_x0=coarse[..., :-1])


def test_predictor_denoise_with_adaptation_leaves_the_loaded_model_unchanged(model_dir):
    from medhdiff.synth.cohort import synthesize

    pred = Predictor(model_dir, device="cpu")
    before = _state(pred.bundle.patch_model)
    case = next(synthesize(1, "t2", spacing=4.0, seed=0, noise_range=(0.0, 0.0)))
    brain = case.brain_mask > 0
    sigma = 0.08 * float(np.percentile(case.image[brain], 99))
    noisy = rician(case.image, sigma, seed=1)
    vol = Volume(noisy, case.affine)
    res = pred.denoise(vol, contrast="t2", mask=brain, adapt=6)
    assert res.image.shape == noisy.shape and np.isfinite(res.image).all()
    assert res.info["adapt_iterations"] == 6 and len(res.info["adapt_loss_first_last"]) == 2
    for k, v in pred.bundle.patch_model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    mse_in = float(np.mean((noisy[brain] - case.image[brain]) ** 2))
    mse_out = float(np.mean((res.image[brain] - case.image[brain]) ** 2))
    assert mse_out < 0.8 * mse_in, (mse_in, mse_out)
    plain = pred.denoise(vol, contrast="t2", mask=brain, adapt=0)
    assert plain.info["adapt_iterations"] == 0
    assert not np.array_equal(plain.image, res.image)


def test_cli_adapt_flag_and_its_record(model_dir, tmp_path):
    a = scan(tmp_path / "a.nii.gz")
    res = invoke("denoise", a, "-w", model_dir, "--device", "cpu", "--adapt", "-1")
    assert res.exit_code == 2 and "--adapt" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "a_denoised.nii.gz").exists()
    res = invoke("denoise", a, "-w", model_dir, "--device", "cpu", "--adapt", "3")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a_denoised.nii.gz").is_file() and "adapted 3 steps" in res.stdout
    record = json.loads((tmp_path / "medhdiff_run.json").read_text())
    assert record["arguments"]["adapt"] == 3
    assert record["cases"][0]["adapt_iterations"] == 3
    res = invoke("denoise", a, "-w", model_dir, "--device", "cpu", "--overwrite")  # on by default
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "medhdiff_run.json").read_text())["cases"][0]["adapt_iterations"] == 20
    res = invoke("denoise", a, "-w", model_dir, "--device", "cpu", "--overwrite", "--adapt", "0")
    assert res.exit_code == 0 and "adapted" not in res.stdout
