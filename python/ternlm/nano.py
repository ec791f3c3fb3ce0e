"""nano: sub-1-bit weights by low-rank binary factorization (NanoQuant, arXiv 2602.06694).

    q = ternlm.quantize(w, "nano:0.8")                 # weights only
    q = ternlm.nano.quantize_nano(w, 0.8, x=acts)      # refined on calibration inputs x [T, in]
    m = ternlm.load(path, weights="nano:0.8")          # every layer matrix, calibrated per block

Each matrix W [out, in] becomes W ~ diag(s_out) U V^T diag(s_in), U in {+-1}^{out x r},
V in {+-1}^{in x r}, fp16 scales (layout and kernel numerics: cpp/formats/nano.h). The
budget b (bits per weight, 0 < b < 2) sets the rank: the largest r whose stored bytes,
padding included, stay within b * out * in / 8 (rank_for).

Conversion, per matrix:
1. Initialization by ADMM on min ||D (W - a b L R^T)||_F with L, R sign matrices: W is
   first balanced (rows and columns divided by their RMS) and its columns weighted by the
   RMS of the calibration inputs (D, the diagonal of the layer's Hessian X^T X), real
   factors start from the truncated SVD, and ADMM alternates the two least-squares factor
   updates (each an r x r solve), the projections of (factor + dual) onto the scaled sign
   sets and the dual updates, with a slowly growing penalty. U, V are the signs of the
   projections, then polished by alternating sign coordinate descent (below) on the same
   weighted error.
2. Scales by alternating least squares on the weighted weight error (closed form per row /
   column).
3. With calibration inputs X (the inputs the block sees after the blocks before it were
   converted, so their errors are absorbed): the output error tr((W - W_hat) H (W - W_hat)^T),
   H = X^T X / T with its diagonal doubled (damping: a few hundred tokens do not see every
   input direction, _hessian), is reduced by exact least squares for s_out (per row) and
   s_in (one in x in solve), and by sign coordinate descent on U (each flip lowers it; all
   rows at once), and on V against the weight error; then the scales again.
The paper's block reconstruction (straight-through training of latent factors over the
whole block) and its global KL scale calibration are not done: step 3 refines each matrix
against its own output error on the block's real inputs.

Calibration (convert_checkpoint_nano): the model's own float forward in numpy on the
Python Language Reference (pydoc_data, not the GPL text that ternlm compare scores), block
by block; each block's matrices are converted in order (q k v, o, gate up, down) on the
inputs the partly converted block produces.
"""
from __future__ import annotations

import math

import numpy as np

NANO = "nano"
CALIBRATION_TOKENS = 384
ADMM_ITERS = 30
SWEEPS = 2
DAMP = 1.0
RHO_GROWTH = 1.2    # penalty growth per ADMM iteration: slower finds sign factors more often


def parse(fmt):
    """'nano:<bits>' -> bits (float in (0, 2)); None when fmt is not a nano format."""
    if not isinstance(fmt, str) or not (fmt == NANO or fmt.startswith(NANO + ":")):
        return None
    text = fmt[len(NANO) + 1:]
    try:
        bits = float(text)
    except ValueError:
        bits = math.nan
    if not (math.isfinite(bits) and 0 < bits < 2):
        raise ValueError(f"{fmt!r}: nano needs a budget in bits per weight, 0 < bits < 2, e.g. 'nano:0.8' "
                         f"(NanoQuant's budgets: 0.55, 0.8, 1.0)")
    return bits


def _round64(n):
    return (n + 63) // 64 * 64


def stored_bytes(out, inn, rank):
    """Bytes of a nano matrix (cpp/formats/nano.h NanoLayout.total)."""
    pc, pr = _round64(inn), _round64(rank)
    return (_round64(rank * pc // 8) + _round64(out * pr // 8) + _round64(2 * pc) + _round64(2 * out))


def rank_for(out, inn, bits):
    """The largest rank whose stored bytes fit bits * out * in / 8."""
    limit = bits * out * inn / 8
    if stored_bytes(out, inn, 1) > limit:
        need = stored_bytes(out, inn, 1) * 8 / (out * inn)
        raise ValueError(f"nano:{bits:g}: a [{out}, {inn}] matrix needs at least {need:.3f} bits per weight "
                         f"(rank 1 with its scales); raise the budget")
    lo, hi = 1, 1 << 16
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if stored_bytes(out, inn, mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _signs(a):
    return np.where(a >= 0, np.float32(1), np.float32(-1))


def _admm(wn, rank, iters, rng):
    """Sign factors L [out, r], R [in, r] with wn ~ c L R^T (see the module docstring)."""
    p, s, qt = np.linalg.svd(wn, full_matrices=False)
    k = min(rank, s.size)
    root = np.sqrt(s[:k])
    L = p[:, :k] * root
    R = qt[:k].T * root
    if k < rank:  # more components than the matrix has dimensions: small random ones
        sd = 0.1 * root.mean()
        L = np.hstack([L, sd * rng.standard_normal((wn.shape[0], rank - k), dtype=np.float32)])
        R = np.hstack([R, sd * rng.standard_normal((wn.shape[1], rank - k), dtype=np.float32)])
    proj = lambda a: np.abs(a).mean() * np.sign(a + 1e-30)  # noqa: E731 (nearest point of c * {+-1})
    zl, zr = proj(L), proj(R)
    ul, ur = np.zeros_like(L), np.zeros_like(R)
    rho = 0.05 * float(np.mean(s[:k]))
    eye = np.eye(rank)
    # r x r inverses in float64 (small), the products in float32
    inv = lambda g: np.linalg.inv(g.astype(np.float64) + rho * eye).astype(np.float32)  # noqa: E731
    for _ in range(iters):
        L = ((wn @ R) + rho * (zl - ul)) @ inv(R.T @ R)
        R = ((wn.T @ L) + rho * (zr - ur)) @ inv(L.T @ L)
        zl, zr = proj(L + ul), proj(R + ur)
        ul += L - zl
        ur += R - zr
        rho *= RHO_GROWTH
    return _signs(zl), _signs(zr)


def _fit_scales(w, m, d, s_out, s_in, rounds=10):
    """Alternating closed-form least squares of sum d_c (w - s_out m s_in)^2."""
    for _ in range(rounds):
        ms = m * s_in
        s_out = (w * ms * d).sum(1) / np.maximum((ms * ms * d).sum(1), 1e-30)
        mo = m * s_out[:, None]
        s_in = (w * mo).sum(0) / np.maximum((mo * mo).sum(0), 1e-30)
    return s_out.astype(np.float32), s_in.astype(np.float32)


def _sign_descent(b, h, g, sweeps):
    """Rows of b (+-1, [n, r]) lowered on f(b) = b H b^T - 2 g b^T, one coordinate at a time for
    all rows at once; a flip is taken only where it lowers f, so f never rises."""
    b = b.copy()
    hb = b @ h
    diag = np.diag(h).copy()
    tol = 1e-7 * float(np.abs(diag).max() or 1.0)
    for _ in range(sweeps):
        flips = 0
        for k in range(b.shape[1]):
            bk = b[:, k]
            idx = np.nonzero(bk * hb[:, k] - diag[k] - bk * g[:, k] > tol)[0]
            if idx.size:
                delta = -2 * bk[idx]
                b[idx, k] = -bk[idx]
                hb[idx] += delta[:, None] * h[k][None, :]
                flips += idx.size
        if not flips:
            break
    return b


def _refine(w, hess, u, v, s_out, s_in, sweeps):
    """Step 3 of the module docstring: lowers tr((W - W_hat) H (W - W_hat)^T), H the damped
    input Hessian (_hessian)."""
    wh = w @ hess                                               # [out, in]

    def scales(s_out, s_in):
        m = u @ v.T
        ms = m * s_in
        s_out = (wh * ms).sum(1) / np.maximum(((ms @ hess) * ms).sum(1), 1e-30)
        g = (m * s_out[:, None]).astype(np.float64)             # [out, in]
        a = hess.astype(np.float64) * (g.T @ g)
        rhs = (g * wh).sum(0)
        a[np.diag_indices_from(a)] += 1e-9 * float(np.mean(np.diag(a))) + 1e-30
        return s_out.astype(np.float32), np.linalg.solve(a, rhs).astype(np.float32)

    def nonzero(s):
        return np.where(np.abs(s) < 1e-12, np.float32(1e-12), s)

    s_out, s_in = scales(s_out, s_in)
    for _ in range(sweeps):
        vt = v * s_in[:, None]                                  # [in, r]
        u = _sign_descent(u, vt.T @ hess @ vt, (wh @ vt) / nonzero(s_out)[:, None], 1)
        ut = u * s_out[:, None]
        v = _sign_descent(v, ut.T @ ut, (w.T @ ut) / nonzero(s_in)[:, None], 1)
        s_out, s_in = scales(s_out, s_in)
    return u, v, s_out, s_in


def _hessian(x, damp):
    """X^T X / T plus damp times its diagonal: a few hundred calibration tokens span fewer
    directions than a layer has inputs, and the undamped fit would blow the weights up
    along the unseen ones (GPTQ damps the same way, with a smaller factor)."""
    h = (x.T @ x) / np.float32(x.shape[0])
    h[np.diag_indices_from(h)] *= np.float32(1 + damp)
    return h


def factorize(w, rank, x=None, iters=ADMM_ITERS, sweeps=SWEEPS, damp=None, seed=0):
    """(u int8 [out, r], v int8 [in, r], s_out, s_in float32) for w [out, in]; x: calibration
    inputs [T, in] or None (weights only)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"nano: w must be 2-D, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("nano: w has a non-finite value (Inf or NaN)")
    if x is not None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != w.shape[1]:
            raise ValueError(f"nano: calibration inputs x have shape {x.shape}, expected (tokens, {w.shape[1]})")
    damp = DAMP if damp is None else damp
    d = np.ones(w.shape[1], np.float32) if x is None else np.sqrt((x * x).mean(0)) + 1e-8
    wd = w * d
    row = np.sqrt((wd * wd).mean(1)) + 1e-12
    col = np.sqrt(((wd / row[:, None]) ** 2).mean(0)) + 1e-12
    wn = wd / row[:, None] / col
    u, v = _admm(wn, rank, iters, np.random.default_rng(seed))
    for _ in range(sweeps):  # alternating sign descent on the balanced, weighted error
        m = u @ v.T
        c = float((wn * m).sum() / max((m * m).sum(), 1e-30))
        u = _sign_descent(u, v.T @ v, wn @ v / c, 1)
        v = _sign_descent(v, u.T @ u, wn.T @ u / c, 1)
    m = u @ v.T
    scale = float((wn * m).sum() / max((m * m).sum(), 1e-30))
    s_out, s_in = _fit_scales(w, m, d * d, row * scale, col / d)
    if x is not None:
        u, v, s_out, s_in = _refine(w, _hessian(x, damp), u, v, s_out, s_in, sweeps)
    return u.astype(np.int8), v.astype(np.int8), s_out, s_in


def quantize_nano(w, bits, x=None, **kw):
    """A nano QuantizedMatrix of w [out, in] within `bits` per weight (see the module docstring)."""
    from .formats import from_nano
    if isinstance(bits, str):
        bits = parse(bits)
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"nano: w must be 2-D, got shape {w.shape}")
    u, v, s_out, s_in = factorize(w, rank_for(*w.shape, bits), x=x, **kw)
    return from_nano(np.ascontiguousarray(u), np.ascontiguousarray(v), s_out, s_in)
