#!/usr/bin/env python3
"""Count probes on a frozen checkpoint: do the vision encoder's per-patch outputs, or the connector's image
tokens, hold the number of shapes in a form a small readout trained on them can take? (Splitting off.)

    /opt/refenv/bin/python scripts/train-tiny-shapes/probe-count.py MODEL [--train N] [--test N] [--jitter J]

MODEL: a checkpoint directory, or a `train.py --snapshot` file (the weights of its step; then the
snapshot's per-patch training head is also asked to count: the number of patches it flags as holding a
shape's centre). Draws --train count scenes (1-4 shapes, colour jitter J) and --test fresh ones (exact
colours), takes the frozen model's features, trains five readouts (Adam, 400 epochs; one also taught per
patch its share of the shapes) and prints their accuracy on both sets with the test errors split as the training evaluation splits them.
"""

import argparse
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes  # noqa: E402
import train  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("model")
ap.add_argument("--train", type=int, default=4000)
ap.add_argument("--test", type=int, default=1000)
ap.add_argument("--jitter", type=int, default=20)
args = ap.parse_args()
n_train, n_test, jitter = args.train, args.test, args.jitter
torch.set_num_threads(2)
torch.manual_seed(0)
centre_head = None
if os.path.isdir(args.model):
    model, procs = train.load_checkpoint(args.model)
    ip = procs[False].image_processor
else:  # a training snapshot: the shipped architecture (train.py's, without --arch) and its patch head
    from transformers import Idefics2ForConditionalGeneration

    st = torch.load(args.model, weights_only=False)
    model = Idefics2ForConditionalGeneration(train.build_config())
    model.load_state_dict(st["model"])
    model.eval()
    ip = train.make_processor(False).image_processor
    w = st["heads"]["patch"]
    centre_head = torch.nn.Linear(w["weight"].shape[1], w["weight"].shape[0])
    centre_head.load_state_dict(w)
    print(f"snapshot of step {st['step']}", flush=True)

@torch.no_grad()
def feats(img):
    b = ip(images=[[img]], return_tensors="pt")
    pv, pm = b["pixel_values"][0], b["pixel_attention_mask"][0]
    mask = train.real_patches(pm, model.config.vision_config.patch_size)
    h = model.model.vision_model(pixel_values=pv, patch_attention_mask=mask).last_hidden_state
    c = model.model.connector(h, attention_mask=mask.view(1, -1))
    return h[0][mask.view(-1)], c[0], pv.shape[-2:]


def share_targets(img, drawn, hw):
    """Per real patch (row-major) of the processed image of size hw: the fraction of each shape's pixels that
    falls in the patch, summed over the shapes (0 on the background): the targets of an image sum to its number
    of shapes, less the parts of shapes in the partial last patch row or column that the encoder drops."""
    ps = model.config.vision_config.patch_size
    (h, w), (W, H) = hw, img.size
    gy, gx = h // ps, w // ps  # the whole patches, as train.real_patches keeps them
    labels = torch.from_numpy(train.label_map(img.size, drawn).astype("int64"))
    py = (torch.arange(H) * h // H // ps)[:, None].expand(H, W)
    px = (torch.arange(W) * w // W // ps)[None, :].expand(H, W)
    keep = (labels > 0) & (py < gy) & (px < gx)
    lab = labels[keep]
    area = torch.bincount(labels[labels > 0], minlength=len(drawn) + 1).float()
    return torch.bincount((py * gx + px)[keep], weights=1.0 / area[lab], minlength=gy * gx).float()


def dataset(seed, n, jitter):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = shapes.sample_example(rng, qkind="count", jitter=jitter)
        h, c, hw = feats(ex["image"])
        share = share_targets(ex["image"], ex["shapes"], hw)
        out.append((h, c, len(ex["shapes"]), len({d["color"] for d in ex["shapes"]}), share))
    return out

t0 = time.time()
tr = dataset(1, n_train, jitter)
te = dataset(2, n_test, 0)
print(f"features: {time.time() - t0:.0f} s", flush=True)

def pad(ds):
    L = max(d[0].shape[0] for d in ds)
    H = torch.zeros(len(ds), L, ds[0][0].shape[1])
    M = torch.zeros(len(ds), L)
    S = torch.zeros(len(ds), L)
    for i, d in enumerate(ds):
        H[i, : d[0].shape[0]] = d[0]
        M[i, : d[0].shape[0]] = 1
        S[i, : d[0].shape[0]] = d[4]
    return H, M, torch.stack([d[1] for d in ds]), torch.tensor([d[2] for d in ds]), torch.tensor([d[3] for d in ds]), S

Htr, Mtr, Ctr, ytr, _, Str = pad(tr)
Hte, Mte, Cte, yte, colte, Ste = pad(te)
print(f"share targets sum to the count on train {((Str.sum(1).round() == ytr).float().mean().item()):.3f}, "
      f"test {((Ste.sum(1).round() == yte).float().mean().item()):.3f} (shapes partly in a dropped partial patch row or column fall short)", flush=True)

def fit(name, net, fwd, loss_fn, pred, epochs=400, dense=None):
    """dense: (per-patch function, weight): also a per-patch loss against the share targets."""
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(ytr), 500):
            s = slice(i, i + 500)
            loss = loss_fn(fwd(Htr[s], Mtr[s], Ctr[s]), ytr[s])
            if dense is not None:
                per_patch, weight = dense
                loss = loss + weight * (((per_patch(Htr[s]) - Str[s]) ** 2) * Mtr[s]).sum() / Mtr[s].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        ptr = pred(fwd(Htr, Mtr, Ctr))
        pte = pred(fwd(Hte, Mte, Cte))
    acc_tr = (ptr == ytr).float().mean().item()
    acc_te = (pte == yte).float().mean().item()
    wrong = pte != yte
    under = (wrong & (pte < yte)).sum().item()
    over = (wrong & (pte > yte)).sum().item()
    ucol = (wrong & (pte < yte) & (pte == colte)).sum().item()
    print(f"{name}: train {acc_tr:.3f} test {acc_te:.3f} (under {under}, {ucol} of them = distinct colours; over {over})", flush=True)

D = Htr.shape[-1]
# 1. sum of a per-patch linear score (softplus): count = sum over patches (bias -6: the sum starts near 0)
lin = torch.nn.Linear(D, 1)
torch.nn.init.constant_(lin.bias, -6.0)
fit("encoder, sum of linear", lin, lambda H, M, C: (F.softplus(lin(H)).squeeze(-1) * M).sum(1),
    lambda o, y: F.mse_loss(o, y.float()), lambda o: o.round().clamp(1, 4).long())
# 2. sum of a per-patch MLP score
mlp = torch.nn.Sequential(torch.nn.Linear(D, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
torch.nn.init.constant_(mlp[2].bias, -6.0)
fit("encoder, sum of MLP", mlp, lambda H, M, C: (F.softplus(mlp(H)).squeeze(-1) * M).sum(1),
    lambda o, y: F.mse_loss(o, y.float()), lambda o: o.round().clamp(1, 4).long())
# 2b. the same MLP also taught per patch its share of the shapes (share_targets)
mlp_s = torch.nn.Sequential(torch.nn.Linear(D, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
torch.nn.init.constant_(mlp_s[2].bias, -6.0)
def share_of(H):
    return F.softplus(mlp_s(H)).squeeze(-1)
fit("encoder, sum of MLP taught per-patch shares", mlp_s, lambda H, M, C: (share_of(H) * M).sum(1),
    lambda o, y: F.mse_loss(o, y.float()), lambda o: o.round().clamp(1, 4).long(), dense=(share_of, 100.0))
# 3. mean of a per-patch MLP embedding -> classifier (what one softmax-uniform latent can see)
m1 = torch.nn.Sequential(torch.nn.Linear(D, 64), torch.nn.GELU())
m2 = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
net3 = torch.nn.ModuleList([m1, m2])
fit("encoder, mean-pool MLP classifier", net3, lambda H, M, C: m2((m1(H) * M[..., None]).sum(1) / M.sum(1, keepdim=True)),
    lambda o, y: F.cross_entropy(o, y - 1), lambda o: o.argmax(-1) + 1)
# 4. connector image tokens, flattened -> MLP classifier (the image tokens the decoder reads)
n_tok = Ctr.shape[1]
net4 = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_tok * D, 128), torch.nn.GELU(), torch.nn.Linear(128, 4))
fit("connector tokens, MLP classifier", net4, lambda H, M, C: net4(C),
    lambda o, y: F.cross_entropy(o, y - 1), lambda o: o.argmax(-1) + 1)

if centre_head is not None:
    # the head's outputs: kind (background + kinds), colour (background + colours), centre (no / yes), ...
    c0 = 2 + len(shapes.KINDS) + len(shapes.COLOR_NAMES)
    with torch.no_grad():
        logit = centre_head(Hte)[..., c0 : c0 + 2]
    margin = logit[..., 1] - logit[..., 0]
    for t in (0.0, 1.0, 2.0, 3.0):
        n_flags = ((margin > t).float() * Mte).sum(1).long()
        print(f"patch head, centre flags summed (logit margin > {t}): test {(n_flags == yte).float().mean().item():.3f} "
              f"(under {(n_flags < yte).sum().item()}, over {(n_flags > yte).sum().item()})", flush=True)
