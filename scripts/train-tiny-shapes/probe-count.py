#!/usr/bin/env python3
"""Count probes on a frozen checkpoint: do the vision encoder's per-patch outputs, or the connector's image
tokens, hold the number of shapes in a form a small readout trained on them can take? (Splitting off.)

    /opt/refenv/bin/python scripts/train-tiny-shapes/probe-count.py MODEL_DIR [N_TRAIN N_TEST [JITTER]]

Draws N_TRAIN count scenes (1-4 shapes, colour jitter JITTER, default 20) and N_TEST fresh ones (exact
colours), takes the frozen model's features, trains four readouts (Adam, 400 epochs) and prints their
accuracy on both sets with the test errors split as the training evaluation splits them.
"""

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

torch.set_num_threads(2)
torch.manual_seed(0)
if len(sys.argv) < 2:
    sys.exit(__doc__)
model_dir = sys.argv[1]
n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
n_test = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
jitter = int(sys.argv[4]) if len(sys.argv) > 4 else 20
model, procs = train.load_checkpoint(model_dir)
ip = procs[False].image_processor

def scene(rng, jitter):
    n = rng.randint(1, 4)
    kinds = [rng.choice(shapes.KINDS) for _ in range(n)]
    colors = [rng.choice(shapes.COLOR_NAMES) for _ in kinds]
    img, drawn = shapes.draw_scene(rng, kinds, colors, jitter=jitter)
    return img, n, len(set(colors))

@torch.no_grad()
def feats(img):
    b = ip(images=[[img]], return_tensors="pt")
    pv, pm = b["pixel_values"][0], b["pixel_attention_mask"][0]
    ps = 14
    sub = pm.unfold(1, ps, ps).unfold(2, ps, ps)
    mask = (sub.sum(dim=(-1, -2)) == ps * ps).bool()
    h = model.model.vision_model(pixel_values=pv, patch_attention_mask=mask).last_hidden_state
    c = model.model.connector(h, attention_mask=mask.view(1, -1))
    return h[0][mask.view(-1)], c[0]

def dataset(seed, n, jitter):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        img, cnt, ncol = scene(rng, jitter)
        h, c = feats(img)
        out.append((h, c, cnt, ncol))
    return out

t0 = time.time()
tr = dataset(1, n_train, jitter)
te = dataset(2, n_test, 0)
print(f"features: {time.time() - t0:.0f} s", flush=True)

def pad(ds):
    L = max(d[0].shape[0] for d in ds)
    H = torch.zeros(len(ds), L, ds[0][0].shape[1])
    M = torch.zeros(len(ds), L)
    for i, d in enumerate(ds):
        H[i, : d[0].shape[0]] = d[0]
        M[i, : d[0].shape[0]] = 1
    return H, M, torch.stack([d[1] for d in ds]), torch.tensor([d[2] for d in ds]), torch.tensor([d[3] for d in ds])

Htr, Mtr, Ctr, ytr, _ = pad(tr)
Hte, Mte, Cte, yte, colte = pad(te)

def fit(name, net, fwd, loss_fn, pred, epochs=400):
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for e in range(epochs):
        for i in range(0, len(ytr), 500):
            s = slice(i, i + 500)
            loss = loss_fn(fwd(Htr[s], Mtr[s], Ctr[s]), ytr[s])
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
