"""K-FAC / EK-FAC influence (docs/methods.md §2.9) through kronfluence, checked against independent math:

* a linear model whose Gauss-Newton matrix is exactly S ⊗ A, where every strategy has a closed form
  (EK-FAC = K-FAC = exact damped GGN influence), computed here in float64 numpy;
* the tiny UNet with ``identity`` = plain dot product of per-sample gradients from ``torch.func``;
* the tiny UNet with EK-FAC / K-FAC / diagonal on one conv layer, re-derived from unfolded patches,
  for the Monte-Carlo and the empirical Fisher;
* shape, determinism, batch-size and slicing invariance, and the sign convention.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import SCHEDULER, TINY_UNET
from diffattr.featurize import per_sample_gradients, prepare_for_vmap
from diffattr.methods.ekfac import (
    FISHER_SPLIT,
    FIT_SPLIT,
    DrawTask,
    EkfacConfig,
    ekfac_scores,
    influence_scores,
)
from diffattr.models.ddpm import add_noise, build_scheduler, build_unet
from diffattr.noise import gaussian_noise, sample_timesteps
from diffattr.outputs import elbo_weight

torch.set_num_threads(1)


# --- exact check on a linear model ----------------------------------------------------------------


class QuadraticTask(DrawTask):
    """o = W a + b, ℓ = ½ (o − y)ᵀ S (o − y): the GGN of a row is S ⊗ ããᵀ (ã = [a, 1]), exactly."""

    def __init__(self, s: torch.Tensor) -> None:
        super().__init__()
        self.s = s

    def draws(self, batch):
        return batch["x"].shape[1]

    def row_losses(self, batch, model):
        x, y = batch["x"], batch["y"]
        out = model(x.reshape(-1, x.shape[-1]))
        r = out - y.repeat_interleave(x.shape[1], dim=0)
        return 0.5 * torch.einsum("ni,ij,nj->n", r, self.s, r)

    row_measurements = row_losses

    def fisher_loss(self, batch, model):
        x = batch["x"]
        return (model(x.reshape(-1, x.shape[-1])) * batch["r"].reshape(-1, self.s.shape[0])).sum()


class Items(torch.utils.data.Dataset):
    def __init__(self, **arrays):
        self.arrays = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in arrays.items()}

    def __len__(self):
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.arrays.items()}


def quadratic_problem(seed=0, d_in=4, d_out=3):
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(d_out, d_out))
    s = low @ low.T / d_out + 0.3 * np.eye(d_out)  # output Hessian, SPD, not diagonal
    factor = np.linalg.cholesky(s)
    n_fit = 7
    fit_x = rng.normal(size=(n_fit, d_in))
    # Each fit item: its input repeated d_out times with pseudo-gradients r_j = sqrt(d_out)·L e_j, so
    # the rows' mean r rᵀ is exactly S and the per-row gradients r ãᵀ form an exact product design.
    r = np.sqrt(d_out) * np.broadcast_to(factor.T, (n_fit, d_out, d_out))
    fit = dict(x=np.repeat(fit_x[:, None], d_out, axis=1), r=r)
    train = dict(x=rng.normal(size=(6, 2, d_in)), y=rng.normal(size=(6, d_out)))
    query = dict(x=rng.normal(size=(3, 3, d_in)), y=rng.normal(size=(3, d_out)))
    return s, fit, train, query


def exact_scores(model, s, fit, train, query, strategy, damping, mode):
    lin = model[0]
    w = np.concatenate([lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()[:, None]], 1)

    def tilde(x):
        return np.concatenate([x, np.ones((*x.shape[:-1], 1))], axis=-1)

    def grads(items):  # (n, d_out·(d_in+1)): mean over draws of S (o − y) ãᵀ, row-major (out, in)
        a = tilde(items["x"])
        resid = a @ w.T - items["y"][:, None]
        return np.einsum("ij,ndj,ndk->nik", s, resid, a).reshape(len(a), -1) / a.shape[1]

    a_fit = tilde(fit["x"][:, 0])
    ggn = np.kron(s, a_fit.T @ a_fit / len(a_fit))  # exact Gauss-Newton (= Hessian) of the fit rows
    p = len(ggn)
    lam = damping * np.trace(ggn) / p if mode == "relative" else damping
    gq, gt = grads(query), grads(train)
    if strategy == "identity":
        return gq @ gt.T
    if strategy == "diagonal":
        return (gq / (np.diag(ggn) + lam)) @ gt.T
    return gq @ np.linalg.solve(ggn + lam * np.eye(p), gt.T)


@pytest.mark.parametrize("strategy,damping,mode", [("ekfac", 0.01, "relative"), ("ekfac", 0.3, "absolute"),
                                                   ("kfac", 0.01, "relative"), ("diagonal", 0.05, "relative"),
                                                   ("identity", 1.0, "relative")])
def test_linear_model_equals_exact_damped_gauss_newton_influence(strategy, damping, mode, tmp_path):
    torch.manual_seed(0)
    s, fit, train, query = quadratic_problem()
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))  # kronfluence cannot wrap a bare root module
    cfg = EkfacConfig(strategy=strategy, damping=damping, damping_mode=mode, batch_size=4)
    ours, _ = influence_scores(model, QuadraticTask(torch.tensor(s, dtype=torch.float32)), Items(**fit),
                                 Items(**train), Items(**query), cfg, str(tmp_path))
    expected = exact_scores(model, s, fit, train, query, strategy, damping, mode)
    assert ours.shape == (3, 6) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


# --- the tiny UNet ---------------------------------------------------------------------------------


def tiny(seed=0):
    torch.manual_seed(seed)
    unet = build_unet(TINY_UNET)
    with torch.no_grad():  # perturb the init so that no layer is in a special state
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet, build_scheduler(SCHEDULER)


def images(n, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)


def draws(seed, split, ids, count):
    ts = sample_timesteps("random", count, 1000, seed, split, ids)
    return ts, gaussian_noise(seed, split, ids, ts, (1, 8, 8))


def test_identity_equals_dot_product_of_torch_func_gradients(tmp_path):
    unet, sched = tiny()
    train, val = images(5, 1), images(3, 2)
    cfg = EkfacConfig(strategy="identity", train_draws=3, query_draws=2, measurement="square", seed=7,
                      batch_size=2)
    ours = ekfac_scores(unet, sched, train, {"val": val}, cfg, str(tmp_path))["val"]

    model = prepare_for_vmap(copy.deepcopy(unet))
    abar, betas = sched.alphas_cumprod.float(), sched.betas.float()
    tracked = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))
               for p, _ in mod.named_parameters(recurse=False)}
    mask = torch.cat([torch.full((p.numel(),), n in tracked) for n, p in model.named_parameters()])
    assert 0 < mask.sum() < mask.numel()  # GroupNorm parameters are not part of the engine's score

    def grads(x, split, count, output):
        ts, eps = draws(7, split, np.arange(len(x)), count)
        g = per_sample_gradients(model, torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(eps),
                                 output, abar, betas)
        return g[:, mask].double()

    expected = (grads(val, "val", 2, "square") @ grads(train, "train", 3, "loss").T).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("strategy,fisher", [("ekfac", "mc"), ("ekfac", "empirical"), ("kfac", "mc"),
                                             ("diagonal", "mc")])
def test_one_conv_layer_equals_independent_curvature(strategy, fisher, tmp_path):
    """conv_out (8 → 1 channels, 3×3) is the UNet's last layer: its per-row gradient is
    Σ_locations s_loc·[patch_loc, 1] for the output gradient s, so (E)K-FAC is re-derived by hand:
    A = mean over rows and locations of ããᵀ = Q diag(a) Qᵀ, S = mean s² (a scalar: one output channel);
    EK-FAC Λ = mean_rows (Qᵀg)², K-FAC Λ = a·S (in Q's basis), diagonal Λ = mean_rows g² (no rotation)."""
    unet, sched = tiny(1)
    abar, betas = sched.alphas_cumprod.float(), sched.betas.float()
    train, val, seed, d = images(6, 3), images(3, 4), 5, 64

    def rows(x, split, count, probe=False):
        ids = np.arange(len(x))
        ts, eps = draws(seed, split, ids, count)
        t, eps = torch.from_numpy(ts).reshape(-1), torch.from_numpy(eps).reshape(-1, 1, 8, 8)
        x_t = add_noise(torch.from_numpy(x).repeat_interleave(count, 0), eps, t, abar)
        seen = {}
        hook = unet.conv_out.register_forward_hook(lambda m, i, o: seen.update(h=i[0]))
        with torch.no_grad():
            pred = unet(x_t, t).sample
        hook.remove()
        patches = torch.nn.functional.unfold(seen["h"], 3, padding=1).double()  # (rows, 72, 64)
        patches = torch.cat([patches, torch.ones_like(patches[:, :1])], 1)  # bias column
        noise = gaussian_noise(seed, FISHER_SPLIT, ids, ts, (1, 8, 8)) if probe else None
        return patches, pred.double().reshape(len(pred), -1), eps.double().reshape(len(pred), -1), t, noise

    patches, pred, eps, _, probe = rows(train, FIT_SPLIT, 4, probe=True)
    if fisher == "mc":  # s = sqrt(2/d)·n, E[ssᵀ] = ∇²_out L_Simple = (2/d)·I
        s_fit = np.sqrt(2 / d) * torch.from_numpy(probe).double().reshape(len(pred), -1)
    else:  # the real L_Simple output gradient
        s_fit = 2 / d * (pred - eps)
    g_fit = torch.einsum("rkl,rl->rk", patches, s_fit)
    a = torch.einsum("rkl,rml->km", patches, patches) / (patches.shape[0] * patches.shape[2])
    a_eig, q = torch.linalg.eigh(a)
    if strategy == "ekfac":
        lam = ((g_fit @ q) ** 2).mean(0)
    elif strategy == "kfac":
        lam = a_eig * (s_fit**2).mean()
    else:
        lam, q = (g_fit**2).mean(0), torch.eye(len(a), dtype=torch.float64)
    damping = float(0.05 * lam.mean())

    def grad(x, split, count, weighted):
        patches, pred, eps, t, _ = rows(x, split, count)
        s = 2 / d * (pred - eps)
        if weighted:
            s = s * elbo_weight(t, betas, abar).double()[:, None]
        return torch.einsum("rkl,rl->rk", patches, s).reshape(len(x), count, -1).mean(1)

    gq, gt = grad(val, "val", 2, True), grad(train, "train", 3, False)
    expected = ((gq @ q) / (lam + damping) @ (gt @ q).T).numpy()

    cfg = EkfacConfig(strategy=strategy, fisher=fisher, damping=damping, damping_mode="absolute", fit_draws=4,
                      train_draws=3, query_draws=2, measurement="elbo", seed=seed, batch_size=4, modules=("conv_out",))
    info = {}
    ours = ekfac_scores(unet, sched, train, {"val": val}, cfg, str(tmp_path), info=info)["val"]
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert info["tracked_parameters"] == 73 and info["damping"] == damping


def test_scores_are_deterministic_batch_independent_sliceable_and_signed(tmp_path):
    unet, sched = tiny(2)
    train, val, gen = images(8, 5), images(5, 6), images(2, 7)
    cfg = EkfacConfig(strategy="ekfac", fit_draws=2, train_draws=2, query_draws=2, batch_size=3)
    first = ekfac_scores(unet, sched, train, {"val": val, "gen": gen}, cfg, str(tmp_path / "a"))
    assert {k: v.shape for k, v in first.items()} == {"val": (5, 8), "gen": (2, 8)}
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in first.values())
    again = ekfac_scores(unet, sched, train, {"val": val, "gen": gen}, cfg, str(tmp_path / "a"))
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
    other = ekfac_scores(unet, sched, train, {"val": val, "gen": gen},
                         EkfacConfig(**{**cfg.__dict__, "batch_size": 8, "queries_per_pass": 2}), str(tmp_path / "b"))
    for k in first:
        np.testing.assert_allclose(other[k], first[k], rtol=1e-4, atol=1e-5 * np.abs(first[k]).max())
    # a slice of the queries, seeded by its ids, gives the same rows; the model was not modified
    part = ekfac_scores(unet, sched, train, {"val": val[2:4]}, cfg, str(tmp_path / "c"),
                        query_ids={"val": np.array([2, 3])})["val"]
    np.testing.assert_allclose(part, first["val"][2:4], rtol=1e-4, atol=1e-5 * np.abs(first["val"]).max())
    assert all(type(m).__name__ != "TrackedConv2d" for m in unet.modules())
    # sign: a training sample measured with its own draws helps itself, gᵀ(Ĝ+λI)⁻¹g > 0
    self_scores = ekfac_scores(unet, sched, train, {"train": train}, cfg, str(tmp_path / "d"))["train"]
    assert (np.diag(self_scores) > 0).all()


def test_config_from_dict_validates():
    cfg = EkfacConfig.from_dict({"strategy": "kfac", "damping": 1e-3, "damping_mode": "absolute",
                                 "modules": ["conv_out"], "measurement": "square"})
    assert cfg.modules == ("conv_out",) and cfg.strategy == "kfac"
    for bad in ({"strategy": "lissa"}, {"measurement": "l1"}, {"damping": 0.0}, {"fit_draws": 0},
                {"dampng": 0.1}, {"damping_mode": "scaled"}, {"fisher": "true"}):
        with pytest.raises(ValueError):
            EkfacConfig.from_dict(bad)
    assert EkfacConfig.from_dict({"strategy": "identity", "damping": 0.0}).damping == 0.0
