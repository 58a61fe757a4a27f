"""scratch/diffusion.py computes what Hugging Face's diffusers computes, step for step and over whole chains.

diffusers' schedulers were written by other people, independently of this project: agreeing
with DDPMScheduler (variance_type="fixed_small", clip_sample=False) and DDIMScheduler
(set_alpha_to_one=True, clip_sample=False, η = 0 and 1) checks our reading of the papers (β̃_t
and not β_t, ᾱ at t and not at t + 1, no noise at t = 0, ᾱ = 1 past the last step, the
"leading" DDIM steps), not only our arithmetic:
  * beta_schedule("linear" and "cosine") and alpha_bar equal the schedulers' betas and alphas_cumprod;
  * q_sample equals add_noise;
  * ddpm_step, chained over all T steps, and ddpm_sample equal DDPMScheduler.step on the same model
    outputs and the same noise (diffusers' own draw replaced by ours);
  * ddim_step chained over DDIM's steps, ddim_timesteps and ddim_sample equal DDIMScheduler.
The "model" is a fixed smooth function of (x_t, t), evaluated on each chain's own state.

DDPM's chains run in float64, diffusers' tables cast to float64 first (float64_tables): in float32,
DDPMScheduler recomputes β_t as 1 − ᾱ_t/ᾱ_{t−1}, whose rounding error is 1e-7 / β_t relative, 1e-3
at the cosine schedule's first steps, where ddpm_step uses β_t itself; chained over 1,000 steps the
two float32 chains end 7e-4 apart. In float64 that difference is 1e-12, and the chains agree to
float64's tolerance. DDIM reads ᾱ only, and its chains agree in float32 as in float64.
diffusers is imported inside the tests: without it they skip (and fail in CI).
"""

import numpy as np
import pytest

from checks.implementations import require_package
from checks.tolerances import assert_close
from scratch import diffusion as Df

pytestmark = pytest.mark.diffusion

WHAT = "diffusers"
KINDS = {"linear": "linear", "cosine": "squaredcos_cap_v2"}  # ours → diffusers' name


def diffusers_and_torch():
    return require_package("diffusers"), require_package("torch")


def ddpm_scheduler(kind, num_steps):
    diffusers, _ = diffusers_and_torch()
    return diffusers.DDPMScheduler(num_train_timesteps=num_steps, beta_schedule=KINDS[kind],
                                   variance_type="fixed_small", clip_sample=False)


def ddim_scheduler(kind, num_steps):
    diffusers, _ = diffusers_and_torch()
    return diffusers.DDIMScheduler(num_train_timesteps=num_steps, beta_schedule=KINDS[kind], clip_sample=False,
                                   set_alpha_to_one=True)


def model(alphas_cumprod, dtype, shape=(6, 3), seed=0, mu=0.5, s=0.2):
    """A fixed ε-"predictor", numpy in and out: the exact one for data N(μ, s²) (checks/test_diffusion_math.py
    derives it) plus a smooth perturbation that changes with x_t and t. Near-exact, it keeps the chain's
    values of order 1; a predictor far from any data's makes the chain grow by hundreds, and its rounding with it."""
    rng = np.random.default_rng(seed)
    A, c = rng.standard_normal((shape[1], shape[1])), rng.standard_normal(shape[1])
    a = np.asarray(alphas_cumprod, dtype=np.float64)

    def eps_fn(x, t):
        a_t = a[np.asarray(t)].reshape(-1, 1)  # (B, 1)
        x = x.astype(np.float64)
        exact = np.sqrt(1.0 - a_t) * (x - np.sqrt(a_t) * mu) / (a_t * s * s + 1.0 - a_t)  # (B, D)
        return (exact + 0.1 * np.tanh(x @ A + c * a_t)).astype(dtype)  # (B, D)

    return eps_fn


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("num_steps", [1, 10, 1000])
def test_beta_schedule_and_alpha_bar_equal_diffusers(kind, num_steps):
    scheduler = ddpm_scheduler(kind, num_steps)
    betas = Df.beta_schedule(kind, num_steps)
    assert betas.shape == (num_steps,) and betas.dtype == np.float64
    assert_close(betas, scheduler.betas.numpy(), impl=WHAT, what=f"{kind} betas, T = {num_steps}", dtype=np.float32)
    assert_close(Df.alpha_bar(betas), scheduler.alphas_cumprod.numpy(), impl=WHAT,
                 what=f"{kind} alphas_cumprod, T = {num_steps}", dtype=np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", list(KINDS))
def test_q_sample_equals_add_noise(kind, dtype):
    _, torch = diffusers_and_torch()
    scheduler = ddpm_scheduler(kind, 1000)
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, 64, 1, 2, 3)).astype(dtype)  # (B, C, H, W): images, as diffusers adds noise
    t = rng.integers(0, 1000, 64)
    t[:2] = 0, 999  # both ends: ᾱ near 1 and near 0
    # diffusers casts its float32 ᾱ to the samples' dtype before the square root: so do we
    alphas_cumprod = scheduler.alphas_cumprod.numpy().astype(dtype)
    ours = Df.q_sample(x0, t, eps, alphas_cumprod)
    theirs = scheduler.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)).numpy()
    assert ours.dtype == dtype
    assert_close(ours, theirs, impl=WHAT, what=f"q_sample ({kind}) against add_noise")


def _replace_randn(monkeypatch, module, noises):
    """diffusers' randn_tensor in `module` returns our noises, one per call, in order."""
    _, torch = diffusers_and_torch()
    queue = list(noises)

    def randn_tensor(shape, generator=None, device=None, dtype=None, **kwargs):
        noise = queue.pop(0)
        assert tuple(shape) == noise.shape, f"diffusers asked for noise {tuple(shape)}, we hold {noise.shape}"
        return torch.from_numpy(noise)

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)
    return queue


def float64_tables(scheduler):
    """The scheduler's tables in float64, from its own float32 betas (the cumulative product taken in float64)."""
    _, torch = diffusers_and_torch()
    scheduler.betas = scheduler.betas.double()
    scheduler.alphas_cumprod = torch.cumprod(1.0 - scheduler.betas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)  # DDIM's ᾱ past the last step
    return scheduler


@pytest.mark.parametrize("kind,num_steps", [("linear", 1000), ("cosine", 1000), ("linear", 10), ("cosine", 10)])
def test_ddpm_chain_equals_ddpm_scheduler(kind, num_steps, monkeypatch):
    diffusers, torch = diffusers_and_torch()
    from diffusers.schedulers import scheduling_ddpm

    scheduler = float64_tables(ddpm_scheduler(kind, num_steps))
    scheduler.set_timesteps(num_steps)
    eps_fn = model(scheduler.alphas_cumprod.numpy(), np.float64)
    x_T = np.random.default_rng(2).standard_normal((6, 3))
    # the noise ddpm_sample draws, in its order (steps T−1 … 1; none at t = 0), fed to diffusers too
    rng = np.random.default_rng(3)
    noises = [rng.standard_normal(x_T.shape) for _ in range(num_steps - 1)]
    left = _replace_randn(monkeypatch, scheduling_ddpm, noises)
    betas = scheduler.betas.numpy()  # (T,) float64, the same table for both
    ours, theirs = x_T, torch.from_numpy(x_T)
    assert [int(t) for t in scheduler.timesteps] == list(range(num_steps - 1, -1, -1))
    for k, t in enumerate(scheduler.timesteps):
        step = int(t)
        theirs = scheduler.step(torch.from_numpy(eps_fn(theirs.numpy(), [step])), t, theirs).prev_sample
        noise = noises[k] if step > 0 else None
        ours = Df.ddpm_step(eps_fn(ours, np.full(len(ours), step)), step, ours, betas, noise)
        if step in (num_steps - 1, num_steps // 2, 0):
            assert_close(ours, theirs.numpy(), impl=WHAT, what=f"ddpm chain ({kind}, T = {num_steps}) at t = {step}")
    assert not left, "diffusers drew fewer noises than the chain's T − 1"
    sampled = Df.ddpm_sample(eps_fn, x_T, betas, np.random.default_rng(3))  # the same draws, by the sampler
    assert_close(sampled, theirs.numpy(), impl=WHAT, what=f"ddpm_sample ({kind}, T = {num_steps})")


def test_ddpm_step_keeps_float32():
    betas = Df.beta_schedule("cosine", 1000).astype(np.float32)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    for t in (999, 500, 0):
        assert Df.ddpm_step(x, t, x, betas, x).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("kind,num_steps,inference_steps", [("linear", 1000, 50), ("cosine", 1000, 50),
                                                           ("linear", 1000, 1000), ("cosine", 10, 3)])
def test_ddim_chain_equals_ddim_scheduler(kind, num_steps, inference_steps, eta, dtype):
    _, torch = diffusers_and_torch()
    scheduler = ddim_scheduler(kind, num_steps)
    if dtype == np.float64:
        scheduler = float64_tables(scheduler)
    scheduler.set_timesteps(inference_steps)
    timesteps = Df.ddim_timesteps(num_steps, inference_steps)
    np.testing.assert_array_equal(timesteps, scheduler.timesteps.numpy(), err_msg="ddim_timesteps against diffusers")
    eps_fn = model(scheduler.alphas_cumprod.numpy(), dtype)
    x_T = np.random.default_rng(4).standard_normal((6, 3)).astype(dtype)
    rng = np.random.default_rng(5)
    noises = [rng.standard_normal(x_T.shape).astype(dtype) for _ in timesteps]
    alphas_cumprod = scheduler.alphas_cumprod.numpy()  # (T,) in dtype, the same table for both
    ours, theirs = x_T, torch.from_numpy(x_T)
    for k, t in enumerate(scheduler.timesteps):
        step = int(t)
        prev = step - num_steps // inference_steps  # diffusers' previous step; −1 after the last: ᾱ = 1
        noise = torch.from_numpy(noises[k]) if eta > 0 else None
        theirs = scheduler.step(torch.from_numpy(eps_fn(theirs.numpy(), [step])), t, theirs, eta=eta,
                                variance_noise=noise).prev_sample
        ours = Df.ddim_step(eps_fn(ours, np.full(len(ours), step)), step, prev, ours, alphas_cumprod, eta=eta,
                            noise=noises[k] if eta > 0 else None)
        assert ours.dtype == dtype
    what = f"ddim chain ({kind}, {inference_steps} of T = {num_steps}, eta = {eta})"
    assert_close(ours, theirs.numpy(), impl=WHAT, what=what)
    if eta == 0.0:
        sampled = Df.ddim_sample(eps_fn, x_T, alphas_cumprod, inference_steps)
        assert_close(sampled, theirs.numpy(), impl=WHAT, what=f"ddim_sample ({kind}, {inference_steps} steps)")
