"""A literal, slow re-statement of the published IMC 2025 metric, for checking src.evaluation.

Written from the published algorithm (imc25-utils metric.py, default parameters inl_cf=0,
strict_cf=-1): nested loops over triplets, thresholds updated one event at a time, Horn's
quaternion method for triplets and the SVD method for refinement, written out with plain
4x4 homogeneous matrices. It shares no code with src.evaluation on purpose.
"""

from __future__ import annotations


import numpy as np


def _rotation_from_quat_wxyz(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
    ])


def similarity_4x4(v0, v1, horn):
    """4x4 similarity mapping columns of v0 (3, n) onto v1 (3, n)."""
    v0 = np.array(v0, float)
    v1 = np.array(v1, float)
    c0, c1 = v0.mean(axis=1), v1.mean(axis=1)
    a, b = v0 - c0[:, None], v1 - c1[:, None]
    if horn:
        S = a @ b.T
        (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = S
        N = np.array([
            [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
            [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
            [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
            [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
        ])
        vals, vecs = np.linalg.eigh(N)
        R = _rotation_from_quat_wxyz(vecs[:, np.argmax(vals)])
    else:
        U, _, Vt = np.linalg.svd(b @ a.T)
        D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
        R = U @ D @ Vt
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(np.sum(b * b) / np.sum(a * a))
        M = np.eye(4)
        M[:3, :3] = s * R
        M[:3, 3] = c1 - s * R @ c0
    return M


def register(ev, gt, ths):
    """ev, gt: (3, n). Returns the (n_valid, r) error table of the best model per threshold."""
    valid = np.all(np.isfinite(ev), axis=0)
    ev, gt = ev[:, valid], gt[:, valid]
    n, r = ev.shape[1], len(ths)
    ev1 = np.vstack([ev, np.ones(n)])
    best_count = np.zeros(r)
    best_sum = np.full(r, np.inf)
    best_err = np.full((n, r), np.inf)
    for i in range(n - 2):
        for j in range(i + 1, n - 1):
            for k in range(j + 1, n):
                M = similarity_4x4(ev[:, [i, j, k]], gt[:, [i, j, k]], horn=True)
                with np.errstate(invalid="ignore"):
                    e2 = np.sum((M[:3] @ ev1 - gt) ** 2, axis=0)
                    inl = e2[:, None] < np.asarray(ths)[None, :] ** 2
                for q in range(r):
                    if inl[:, q].sum() <= 2:
                        continue
                    if any(np.array_equal(inl[:, q], inl[:, p]) for p in range(q)):
                        continue
                    M2 = similarity_4x4(ev[:, inl[:, q]], gt[:, inl[:, q]], horn=False)
                    with np.errstate(invalid="ignore"):
                        e2r = np.sum((M2[:3] @ ev1 - gt) ** 2, axis=0)
                        cnt = np.sum(e2r[:, None] < np.asarray(ths)[None, :] ** 2, axis=0)
                    total = e2r.sum()
                    for c in range(r):
                        if cnt[c] > best_count[c] or (cnt[c] == best_count[c] and total < best_sum[c]):
                            best_count[c] = cnt[c]
                            best_sum[c] = total
                            best_err[:, c] = np.sqrt(e2r)
    return best_err


def score(user, gt, thresholds, skip=2, deduct=3):
    """user/gt: {dataset: {scene: {image: centre}}} (insertion-ordered); thresholds:
    {dataset: {scene: list}}. Returns (final score, {dataset: (mAA, clusterness, score)})."""
    per_dataset = {}
    for dataset, gt_scenes in gt.items():
        user_scenes = user[dataset]
        rows = []
        for g, gt_cams in gt_scenes.items():
            if g == "outliers":
                continue
            ths = np.asarray(thresholds[dataset][g])
            best = None
            for u, user_cams in user_scenes.items():
                if u == "outliers":
                    cand = dict(shared=0, maa=0.0, size=0, gt_size=0, hits=None, order=len(rows))
                else:
                    common = [im for im in gt_cams if im in user_cams]
                    ev = np.array([user_cams[im] for im in common]).reshape(-1, 3).T
                    gg = np.array([gt_cams[im] for im in common]).reshape(-1, 3).T
                    err = register(ev, gg, ths)
                    hits = np.sum(err[:, skip:] < ths[None, skip:], axis=0)
                    num = np.sum(np.maximum(hits - deduct, 0))
                    maa = 0.0 if num == 0 else num / ((len(ths) - skip) * (len(gt_cams) - deduct))
                    cand = dict(shared=len(common), maa=maa, size=len(user_cams),
                                gt_size=len(gt_cams), hits=hits)
                if best is None or (cand["shared"], cand["maa"]) > (best["shared"], best["maa"]):
                    best = cand
            rows.append(best)
        lt = len(next(iter(thresholds[dataset].values()))) - skip
        n = sum(b["gt_size"] for b in rows)
        a = sum(np.sum(np.maximum(b["hits"] - deduct, 0)) for b in rows if b["hits"] is not None)
        den = max(0, lt * (n - len(rows) * deduct))
        maa = 0.0 if den == 0 else a / den
        size = sum(b["size"] for b in rows)
        clus = 0.0 if size == 0 else sum(b["shared"] for b in rows) / size
        sc = 0.0 if maa + clus == 0 else 2 * maa * clus / (maa + clus)
        per_dataset[dataset] = (maa, clus, sc)
    return 100 * float(np.mean([v[2] for v in per_dataset.values()])), per_dataset


def centres_from_frame(frame):
    out = {}
    for rec in frame.itertuples(index=False):
        R = np.array([float(x) for x in rec.rotation_matrix.split(";")]).reshape(3, 3)
        t = np.array([float(x) for x in rec.translation_vector.split(";")])
        out.setdefault(rec.dataset, {}).setdefault(rec.scene, {})[rec.image] = -R.T @ t
    return out


def thresholds_from_frame(frame):
    out = {}
    for rec in frame.itertuples(index=False):
        out.setdefault(rec.dataset, {})[rec.scene] = [float(x) for x in rec.thresholds.split(";")]
    return out


