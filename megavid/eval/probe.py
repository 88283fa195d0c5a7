"""Linear probes: frozen features -> a task's targets by ridge regression, in closed form.

The standard frozen-feature protocol of self-supervised learning: no architecture or
optimiser to tune, only the ridge penalty, chosen by cross-validation over the training
clips. What a linear map reads from the features is what they hold in an accessible
form, so the probe measures the features alone, where the attention readout
(``readout.py``) also measures its own training. Each probe predicts the residual to its
task's prior (``tasks.py``: the training set's mean log-depth map, points that stay
where they were queried, a camera that does not move), so ``residual_r2`` (the share of
the prior's squared error the probe removes) reads as "what the features add to the
prior": 0 is the prior itself.

The probes, per task (rows are what one linear map sees; ``K`` outputs per row):

- depth: one row per token, the log-depth residual of each of its ``t x h x w`` pixels;
- tracking: one row per query, the encoder's features bilinearly sampled at the query
  point in its frame's token slice, mapped to the point's displacement at every frame
  (``2T``) and its visibility (``T``, visible where the prediction is over 0.5);
- pose: one row per time token, its features pooled over space beside the first
  token's, mapped to its frames' rotations (minus the identity) and translations
  relative to frame 0.

Two reference encoders go through the same probe (``references``): the clip's raw
tubelet pixels as features, and an oracle whose features are the probe's own targets
plus Gaussian noise of ``ORACLE_NOISE`` target standard deviations. The oracle scores near
the top (``tests/eval/test_probe.py``), so a null result reads as "the features lack
it", never as "the probe is broken".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from megavid.eval.tasks import Task, mean_log_depth
from megavid.kernels import reference

# ridge penalties, relative to the mean eigenvalue of the standardised features' Gram matrix
RIDGE_ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-5.0, 4.01, 0.5))
CV_FOLDS = 5  # the training clips, cut into this many blocks, choose the penalty
ORACLE_NOISE = 0.1  # the oracle's feature noise, in standard deviations of each target


@dataclass
class Ridge:
    """``y = ((x - mean) / scale) @ weight + bias``, fitted by ``fit_ridge``."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    alpha: float  # the chosen penalty (relative, see RIDGE_ALPHAS)
    cv_mse: dict  # standardised cross-validation MSE per alpha tried

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.double() - self.mean) / self.scale
        return (x @ self.weight + self.bias).float()


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    return mean, torch.where(scale > 1e-8, scale, torch.ones_like(scale))  # constant: 0


def _solve(x: torch.Tensor, y: torch.Tensor):
    """The standardised features' spectrum, for many penalties at once: (mean, scale,
    y mean, eigenvalues (r,), eigenvectors (D, r), their projection of X^T y (r, K)).
    With more features than rows (pooled pose features, raw pixels) it diagonalises the
    (M, M) kernel matrix instead of the (D, D) Gram matrix: the same nonzero spectrum."""
    mean, scale = _standardise(x)
    xs = (x - mean) / scale
    y_mean = y.mean(0)
    yc = y - y_mean
    if xs.shape[1] <= xs.shape[0]:
        evals, evecs = torch.linalg.eigh(xs.T @ xs)
        evals = evals.clamp(min=0)
        return mean, scale, y_mean, evals, evecs, evecs.T @ (xs.T @ yc)
    evals, u = torch.linalg.eigh(xs @ xs.T)
    keep = evals > evals.max() * 1e-12
    evals, u = evals[keep], u[:, keep]
    evecs = xs.T @ u / evals.sqrt()  # right singular vectors
    return mean, scale, y_mean, evals, evecs, evals.sqrt()[:, None] * (u.T @ yc)


def _penalised(evals: torch.Tensor, proj: torch.Tensor, alpha: float, dims: int):
    """The ridge coefficients in the eigenbasis of ``_solve``: ``proj`` shrunk by the
    penalty ``alpha``, relative to the mean over all ``dims`` eigenvalues."""
    base = evals.sum().clamp(min=1e-12) / dims
    return proj / (evals + alpha * base)[:, None]


def fit_ridge(x: torch.Tensor, y: torch.Tensor, folds: torch.Tensor,
              alphas: tuple[float, ...] = RIDGE_ALPHAS) -> Ridge:
    """Ridge from ``x`` (M, D) to ``y`` (M, K). ``folds`` (M,) numbers each row's
    cross-validation fold (the rows of one clip share one): each fold in turn is held out
    and predicted from the others, and the penalty of least error over every held-out row
    (standardised, every output weighted alike) is then refitted on every row. One
    held-out split of a few dozen clips was too noisy a judge: it chose penalties under
    which a probe scored worse on the test clips than its own intercept (tracking, w128
    encoder of the scaling curve: residual R^2 -0.08, against 0.013 cross-validated).
    Features and the intercept are not penalised apart: features are standardised, the
    intercept is the targets' mean."""
    x, y = x.double(), y.double()
    if len(folds.unique()) < 2:
        raise ValueError("fit_ridge: need at least 2 cross-validation folds")
    y_scale = y.std(0, unbiased=False).clamp(min=1e-8)
    errors = dict.fromkeys(alphas, 0.0)
    for fold in folds.unique():
        fit, val = folds != fold, folds == fold
        mean, scale, y_mean, evals, evecs, proj = _solve(x[fit], y[fit])
        xv = ((x[val] - mean) / scale) @ evecs  # (Mv, D)
        for alpha in alphas:
            pred = xv @ _penalised(evals, proj, alpha, x.shape[1]) + y_mean
            errors[alpha] += float((((pred - y[val]) / y_scale) ** 2).mean(1).sum()) / len(x)
    best = min(errors, key=errors.get)
    mean, scale, y_mean, evals, evecs, proj = _solve(x, y)
    weight = evecs @ _penalised(evals, proj, best, x.shape[1])
    return Ridge(mean, scale, weight, y_mean, best, errors)


def r2(target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Share of ``target``'s variance (pooled over the masked entries) that ``pred`` explains."""
    target, pred = target.double(), pred.double()
    if mask is not None:
        target, pred = target[mask], pred[mask]
    total = ((target - target.mean()) ** 2).sum()
    return float(1 - ((target - pred) ** 2).sum() / total) if total > 0 else float("nan")


# --------------------------------------------------------------------------- the task probes

class Probe:
    """One task's probe on a (T', H', W') token grid: rows, targets (residuals to the
    prior, fitted from the training targets) and predictions in the task's units (what
    ``Task.metrics`` takes)."""

    def __init__(self, task: Task, train_targets: dict, grid: tuple[int, int, int]):
        self.task, self.grid = task, tuple(grid)
        self.prior = self.fit_prior(train_targets)

    def fit_prior(self, train_targets: dict):
        return None

    def rows(self, features: torch.Tensor, targets: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (N, R, D) and which of them are fitted (N, R), from (N, T', H', W', D)."""
        raise NotImplementedError

    def residual(self, targets: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets (N, R, K) as residuals to the prior (what is fitted), and which entries
        are scored by ``r2``."""
        raise NotImplementedError

    def total(self, targets: dict) -> torch.Tensor:
        """What the residual adds to (N, R, K): the full target, for ``r2``."""
        raise NotImplementedError

    def predictions(self, residual: torch.Tensor, targets: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def residual_parts(self, residual: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                       targets: dict) -> dict[str, float]:
        """Task-specific splits of ``residual_r2`` (``score`` adds them to the metrics)."""
        return {}


def _tubelet(shape, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """The tubelet that cuts a (T, H, W) clip into the (T', H', W') token grid."""
    if any(n % g for n, g in zip(shape, grid)):
        raise ValueError(f"probe: a {'x'.join(map(str, shape))} clip does not tile into a "
                         f"{'x'.join(map(str, grid))} token grid")
    return tuple(n // g for n, g in zip(shape, grid))


def patchify(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(N, T, H, W[, C]) -> (N, T'H'W', t h w C) in the encoder's token order (the MAE's own
    ``megavid.kernels.reference.patchify``; one channel where ``x`` has none)."""
    video = x if x.ndim == 5 else x[..., None]
    return reference.patchify(video, _tubelet(x.shape[1:4], grid))


def unpatchify(x: torch.Tensor, grid: tuple[int, int, int], shape: tuple[int, int, int]):
    """Inverse of ``patchify`` for one channel: (N, T'H'W', t h w) -> (N, T, H, W)."""
    return reference.unpatchify(x, _tubelet(shape, grid), grid, 1)[..., 0]


class DepthProbe(Probe):
    """Invalid pixels (depth 0) are fitted as the prior and not scored."""

    def fit_prior(self, train_targets):
        return mean_log_depth(train_targets["depth"])  # (T, H, W)

    def rows(self, features, targets):
        n, d = features.shape[0], features.shape[-1]
        return features.reshape(n, -1, d), torch.ones(n, features[0, ..., 0].numel(),
                                                      dtype=torch.bool)

    def _log_depth(self, targets):
        depth = targets["depth"]
        valid = depth > 0
        return torch.where(valid, depth.clamp(min=1e-6).log(), torch.zeros_like(depth)), valid

    def residual(self, targets):
        logd, valid = self._log_depth(targets)
        res = torch.where(valid, logd - self.prior, torch.zeros_like(logd))  # invalid: prior
        return patchify(res, self.grid), patchify(valid, self.grid)

    def total(self, targets):
        return patchify(self._log_depth(targets)[0], self.grid)

    def predictions(self, residual, targets):
        shape = tuple(targets["depth"].shape[1:])
        return {"depth": (unpatchify(residual, self.grid, shape) + self.prior).exp().numpy()}

    def residual_parts(self, residual, pred, mask, targets):
        """``residual_r2`` split per frame: ``residual_r2_frame_mean``, the frames' mean
        log-depth residuals (the depth scale, which AbsRel's per-frame median scaling takes
        out) and ``residual_r2_in_frame``, each pixel's residual about its frame's mean (the
        structure AbsRel scores). The two squared errors add up to ``residual_r2``'s."""
        shape = tuple(targets["depth"].shape[1:])
        r, p, m = (unpatchify(x.double(), self.grid, shape) for x in (residual, pred, mask))
        count = m.sum((2, 3))
        r_mean, p_mean = ((x * m).sum((2, 3)) / count.clamp(min=1) for x in (r, p))
        parts = {"frame_mean": (count * (r_mean - p_mean) ** 2, count * r_mean ** 2)}
        r_in = r - r_mean[..., None, None]
        parts["in_frame"] = ((r_in - p + p_mean[..., None, None]) ** 2 * m, r_in ** 2 * m)
        return {f"residual_r2_{name}": float(1 - error.sum() / prior.sum())
                if prior.sum() > 0 else float("nan") for name, (error, prior) in parts.items()}


class TrackingProbe(Probe):
    """Rows: queries; features sampled at the query point (the token slice of its frame).
    Trained on the test's queries (each point's first visible frame; ``run.run_eval``)."""

    def rows(self, features, targets):
        n, gt, gh, gw, d = features.shape
        query = targets["query_points"]  # (N, Q, 3): t, y, x normalised
        slot = (query[..., 0] * gt).long().clamp(0, gt - 1)  # (N, Q) time token
        where = (query[..., [2, 1]] * 2 - 1)[:, :, None, None]  # (N, Q, 1, 1, 2) in [-1, 1]
        out = torch.empty(n, query.shape[1], d)
        for i in range(n):  # one clip at a time: (Q, D, H', W') planes stay small
            planes = features[i, slot[i]].permute(0, 3, 1, 2).float()
            out[i] = F.grid_sample(planes, where[i].float(), mode="bilinear",
                                   padding_mode="border", align_corners=False)[..., 0, 0]
        return out, targets["query_valid"]

    def _start(self, targets):
        return targets["query_points"][..., None, [2, 1]]  # (N, Q, 1, 2) as (x, y)

    def residual(self, targets):
        """Displacements (the prior: 0) and visibility minus 1 (the prior: visible); ``r2``
        scores the displacements at visible frames (visibility: occlusion accuracy)."""
        disp = targets["xy"] - self._start(targets)  # (N, Q, T, 2)
        vis = targets["visible"].float() - 1
        n, q, t = vis.shape
        scored = (targets["visible"] & targets["query_valid"][..., None])
        out = torch.cat([disp.reshape(n, q, 2 * t), vis], -1)
        mask = torch.cat([scored[..., None].expand(n, q, t, 2).reshape(n, q, 2 * t),
                          torch.zeros(n, q, t, dtype=torch.bool)], -1)
        return out, mask

    def total(self, targets):
        n, q, t = targets["visible"].shape
        return torch.cat([targets["xy"].reshape(n, q, 2 * t), torch.zeros(n, q, t)], -1)

    def predictions(self, residual, targets):
        n, q, t = targets["visible"].shape
        xy = residual[..., :2 * t].reshape(n, q, t, 2) + self._start(targets)
        hw = targets["size"][:, None, None, [1, 0]]
        return {"tracks": (xy * hw).numpy(), "visible": (residual[..., 2 * t:] > -0.5).numpy()}


class PoseProbe(Probe):
    """One row per time token: its features pooled over space, beside the first token's,
    mapped to the poses of its frames relative to frame 0; ``r2`` pools the rotation entries
    and the translations (in the data's units)."""

    def rows(self, features, targets):
        pooled = features.mean((2, 3))  # (N, T', D)
        rows = torch.cat([pooled, pooled[:, :1].expand_as(pooled)], -1)
        return rows, torch.ones(rows.shape[:2], dtype=torch.bool)

    def _flat(self, pose):
        n, t = pose.shape[:2]
        return torch.cat([pose[..., :3, :3].reshape(n, t, 9), pose[..., :3, 3]], -1)

    def residual(self, targets):
        pose = targets["pose"]
        n = len(pose)
        res = self._flat(pose) - self._flat(torch.eye(4).expand_as(pose))  # the prior: static
        return res.reshape(n, self.grid[0], -1), torch.ones(n, self.grid[0], res[0].numel()
                                                            // self.grid[0], dtype=torch.bool)

    def total(self, targets):
        pose = targets["pose"]
        return self._flat(pose).reshape(len(pose), self.grid[0], -1)

    def predictions(self, residual, targets):
        n, t = targets["pose"].shape[:2]
        flat = residual.reshape(n, t, 12).double()
        rot = flat[..., :9].reshape(n, t, 3, 3) + torch.eye(3, dtype=torch.float64)
        u, _, vh = torch.linalg.svd(rot)  # the nearest rotation (Procrustes)
        fix = torch.ones(n, t, 3, dtype=torch.float64)
        fix[..., 2] = torch.linalg.det(u @ vh).sign()
        out = torch.eye(4, dtype=torch.float64).repeat(n, t, 1, 1)
        out[..., :3, :3] = u @ torch.diag_embed(fix) @ vh
        out[..., :3, 3] = flat[..., 9:]
        return {"pose": out.float().numpy()}


PROBES = {"depth": DepthProbe, "tracking": TrackingProbe, "pose": PoseProbe}


def check_task(name: str) -> None:
    if name not in PROBES:
        raise ValueError(f"--readout linear: no linear probe for --task {name}; choose one of "
                         f"{', '.join(PROBES)} or --readout attention")


def get_probe(task: Task, train_targets: dict, grid: tuple[int, int, int]) -> Probe:
    check_task(task.name)
    return PROBES[task.name](task, train_targets, grid)


# --------------------------------------------------------------------------- running one

def clip_folds(num_clips: int) -> torch.Tensor:
    """(N,) each training clip's cross-validation fold: ``CV_FOLDS`` contiguous blocks
    (fewer for fewer clips), so a clip's rows are never both fitted and held out."""
    if num_clips < 2:
        raise ValueError(f"--readout linear: {num_clips} training clip(s); the penalty is "
                         "chosen on held-out clips, so at least 2 are needed")
    folds = min(CV_FOLDS, num_clips)
    return torch.arange(num_clips) * folds // num_clips


def probe_features(probe: Probe, train_grid: torch.Tensor, test_grid: torch.Tensor,
                   targets: dict) -> tuple[dict, torch.Tensor]:
    """Fit on the training rows, score on the test rows: (metrics in the task's terms plus
    ``r2`` of the full target and ``residual_r2`` of the residual to the prior, the test
    residual prediction for ``Probe.predictions``)."""
    x_train, keep_train = probe.rows(train_grid, targets["train"])
    x_test, _ = probe.rows(test_grid, targets["test"])
    return probe_rows(probe, x_train, keep_train, x_test, targets)


def probe_rows(probe: Probe, x_train, keep_train, x_test, targets: dict
               ) -> tuple[dict, torch.Tensor]:
    y_train, _ = probe.residual(targets["train"])
    folds = clip_folds(len(x_train))[:, None].expand_as(keep_train)
    keep = keep_train.reshape(-1)
    ridge = fit_ridge(x_train.reshape(-1, x_train.shape[-1])[keep],
                      y_train.reshape(-1, y_train.shape[-1])[keep], folds.reshape(-1)[keep])
    n, r = x_test.shape[:2]
    pred = ridge.predict(x_test.reshape(n * r, -1)).reshape(n, r, -1)
    metrics = score(probe, pred, targets["test"])
    metrics["ridge_alpha"] = ridge.alpha
    return metrics, pred


def score(probe: Probe, residual_pred: torch.Tensor, targets: dict) -> dict:
    """The task's metrics, ``r2`` (the full target's variance explained) and
    ``residual_r2``: the share of the prior's squared error that the prediction removes,
    ``1 - |r - r_hat|^2 / |r|^2`` (0: the prior itself, 1: perfect, < 0: worse than it)."""
    residual, mask = probe.residual(targets)
    total = probe.total(targets)
    metrics = probe.task.metrics(probe.predictions(residual_pred, targets), targets)
    metrics["r2"] = r2(total, total - residual + residual_pred, mask)
    res, pred = residual.double()[mask], residual_pred.double()[mask]
    prior_error = (res ** 2).sum()
    metrics["residual_r2"] = float(1 - ((res - pred) ** 2).sum() / prior_error) \
        if prior_error > 0 else float("nan")
    metrics.update(probe.residual_parts(residual, residual_pred, mask, targets))
    return metrics


def prior_metrics(probe: Probe, targets: dict) -> dict:
    """The prior alone: ``r2`` is the share of the target's variance it explains."""
    residual, _ = probe.residual(targets)
    return score(probe, torch.zeros_like(residual), targets)


def pixel_grid(clips, grid: tuple[int, int, int]) -> torch.Tensor:
    """Raw tubelet pixels as an (N, T', H', W', t h w 3) feature grid."""
    video = torch.from_numpy(np.stack([c.video for c in clips])).float()  # (N, T, H, W, 3)
    return patchify(video, grid).reshape(len(clips), *grid, -1)


def references(probe: Probe, clips: dict, targets: dict, *, seed: int) -> dict:
    """The raw-pixel and oracle references and the prior alone, through the same probe."""
    out = {"pixels": probe_features(probe, pixel_grid(clips["train"], probe.grid),
                                    pixel_grid(clips["test"], probe.grid), targets)[0]}
    ys = {split: probe.residual(targets[split])[0] for split in ("train", "test")}
    spread = ys["train"].reshape(-1, ys["train"].shape[-1]).std(0)
    gen = torch.Generator().manual_seed(seed)
    noisy = {split: y + ORACLE_NOISE * spread * torch.randn(y.shape, generator=gen)
             for split, y in ys.items()}
    keep = probe.rows(torch.zeros(len(clips["train"]), *probe.grid, 1), targets["train"])[1]
    out["oracle"] = {**probe_rows(probe, noisy["train"], keep, noisy["test"], targets)[0],
                     "noise": ORACLE_NOISE}
    out["prior"] = prior_metrics(probe, targets["test"])
    return out
