"""numpy references of the head formats' stored fields and integer math (cpp/formats/int8.h,
cpp/formats/q6.h): decode the stored buffers into plain arrays, and compute the exact int32
block sums I[r, b] and the f32 matmul those headers define."""
import numpy as np
def int8_fields(q):
    """(qw int8 [rows, cols], scale f32 [rows]) from the stored buffers (int8.h)."""
    rows, cols = q.shape
    b = q.buffers(); pc = -(-cols // 32) * 32; tiles = -(-rows // 16)
    t = b["q8"].view(np.int8).reshape(tiles, pc // 4, 16, 4)      # [tile][block][row][i]
    w = t.transpose(0, 2, 1, 3).reshape(tiles * 16, pc)[:rows, :cols]
    return w, b["row_multiplier"]

def q6_fields(q):
    """(u [rows, pc], sc int8 [rows, pc/16], d f16 [rows, nsup]) from the stored tiles (q6.h)."""
    rows, cols = q.shape
    pc = -(-cols // 32) * 32; tiles = -(-rows // 16)
    raw = q.buffers()["tiles"].reshape(tiles, -1)
    u = np.zeros((tiles, 16, pc), np.int32); sc = np.zeros((tiles, 16, pc // 16), np.int8)
    d = np.zeros((tiles, 16, -(-pc // 256)), np.float16)
    at = 0
    for s in range(-(-pc // 256)):
        n = min(256, pc - 256 * s); nsub = n // 16
        for j in range(nsub):
            blk = raw[:, at + 192 * j: at + 192 * (j + 1)].reshape(tiles, 3, 16, 4).astype(np.int32)
            a, bb, h = blk[:, 0], blk[:, 1], blk[:, 2]
            for k in range(4):
                lo = (a if k < 2 else bb) >> (4 * (k % 2)) & 15
                hi = (h >> (2 * k)) & 3
                u[:, :, 256 * s + 16 * j + 4 * k: 256 * s + 16 * j + 4 * k + 4] = lo | (hi << 4)
        scs = raw[:, at + 192 * nsub: at + 208 * nsub].view(np.int8).reshape(tiles, nsub, 16)
        sc[:, :, 16 * s: 16 * s + nsub] = scs.transpose(0, 2, 1)
        d[:, :, s] = raw[:, at + 208 * nsub: at + 208 * nsub + 32].copy().view(np.float16).reshape(tiles, 16)
        at += 208 * nsub + 32
    f = lambda a: a.reshape(tiles * 16, *a.shape[2:])[:rows]
    return f(u), f(sc), f(d)

def head_block_dots_ref(q, x):
    """Exact int32 block sums I[r, b] (int8.h / q6.h) of int8 activations x [cols]."""
    rows, cols = q.shape
    pc = -(-cols // 32) * 32
    xp = np.zeros(pc, np.int64); xp[:cols] = x
    if q.format == "int8":
        w, _ = int8_fields(q)
        wp = np.zeros((rows, pc), np.int64); wp[:, :cols] = w
        return (wp * xp).reshape(rows, pc // 32, 32).sum(axis=2)
    u, sc, _ = q6_fields(q)
    prod = (u.astype(np.int64) - 32) * xp    # padding codes: x is 0 there
    subs = prod.reshape(rows, pc // 16, 16).sum(axis=2) * sc.astype(np.int64)
    return subs.reshape(rows, pc // 32, 2).sum(axis=2)


def head_matmul_ref(q, x):
    """y [n, rows] in float64 from the numerics of int8.h / q6.h: activations int8 per block of
    32 (ternlm's own quantizer, which every target matches bit for bit), exact block sums."""
    from ternlm import _core
    x = np.atleast_2d(x)
    rows, cols = q.shape
    pc = -(-cols // 32) * 32
    out = np.zeros((x.shape[0], rows))
    for i, xr in enumerate(x):
        qx = np.zeros(cols, np.int8)
        inv = np.zeros(pc // 32)
        for b in range(pc // 32):
            qb, inv[b] = _core.quantize_activations_int8(np.ascontiguousarray(xr[32 * b: 32 * b + 32]))
            qx[32 * b: 32 * b + len(qb)] = qb
        blocks = head_block_dots_ref(q, qx) * inv            # [rows, nb]
        if q.format == "int8":
            out[i] = int8_fields(q)[1] * blocks.sum(axis=1)
        else:
            d = q6_fields(q)[2].astype(np.float64)
            per_super = np.add.reduceat(blocks, np.arange(0, pc // 32, 8), axis=1)
            out[i] = (d * per_super).sum(axis=1)
    return out
