"""The issue's PyTorch reference, measured on this machine: a PyTorch replica of the stage-1
plain, Barlow Twins and VIbCReg steps at B = 128, L = 128 (NC-VQVAE's single codebook), and of
the prior's (stage-2) train step at B = 256.

  python benchmarks/torch_reference.py plain 20       # variant, timed steps [, 1 = channels-last]
  python benchmarks/torch_reference.py barlowtwins 10
  python benchmarks/torch_reference.py vibcreg 10
  python benchmarks/torch_reference.py stage2 20

PyTorch is not a dependency of tsgen_jax; run this in an environment that has it (the issue's
figures are PyTorch 2.13 on CPU, e.g. ``pip install torch==2.13.0+cpu`` from a CPU wheel). The
replica follows tsgen_jax's default shapes, not the thesis code line by line: torch.stft
(n_fft 8, hop 2, hann, centred), real and imaginary parts as channels; encoder of three (3, 4)
stride-(1, 2) convs + BatchNorm + LeakyReLU, four residual blocks, a 1 x 1 conv (dim 64); an
EMA codebook of 32 codes with a straight-through estimator and commitment loss; decoder of
four residual blocks and three ConvTranspose2d upsamplings, resized to the STFT grid;
torch.istft; time and time-frequency MSE; AdamW. Barlow Twins adds two views (amplitude
resize, slope, jitter, done in torch inside the step), the avg+max pooled latents of both,
a 4096-wide projector and the Barlow Twins loss (lambda 5e-3); VIbCReg the same projector
followed by IterNorm (64 groups, 5 Newton-Schulz iterations, the original's uncoupled form)
and the VIbCReg loss (25, 25, 100) with its (D, D) correlation matrices, weighted 0.01 as
tsgen_jax's ``ssl.weight``. That loss, taken as the issue defines it, is dearer in PyTorch
than Barlow Twins' (its two (D, D) matrices and their elementwise passes: 523 against 231 ms
of forward + backward at (128, 4096) on the Zen 5 kind), while the issue's own figures have
the thesis code's VIbCReg step slightly below its Barlow Twins step: read its time as an upper
bound. Prints the median, min and max step time (``time.perf_counter`` around zero_grad,
forward, backward and the optimiser step, after 3 warm-up steps). The stage-2 replica is
tsgen_jax's prior at the benchmark's shapes (see ``Prior``), with MaskGIT's cosine masking and
the class dropped to the null id with probability 0.2. benchmarks/NOTES.md items 19, 20 and 25
and the Reference section of BENCHMARKS.md quote it.
"""
import sys
import time

import numpy as np

try:
  import torch
  import torch.nn as nn
  import torch.nn.functional as F
except ImportError:
  sys.exit("benchmarks/torch_reference.py needs PyTorch (not a tsgen_jax dependency): "
           "pip install torch in another environment")

torch.manual_seed(0)
B, C, L, NFFT, HOP, DIM, NRES = 128, 1, 128, 8, 2, 64, 4
STAGE2_BATCH = 256


def stft(x):
  """(B, C, L) -> (B, 2C, F, T): real and imaginary parts as channels."""
  b = x.shape[0]
  s = torch.stft(x.reshape(-1, L), NFFT, HOP, window=torch.hann_window(NFFT), center=True,
                 return_complex=True)
  s = torch.view_as_real(s)  # (BC, F, T, 2)
  return s.reshape(b, C, *s.shape[1:]).permute(0, 1, 4, 2, 3).reshape(b, 2 * C, *s.shape[1:3])


def istft(s):
  """(B, 2C, F, T) -> (B, C, L)."""
  b, _, f, t = s.shape
  s = s.reshape(b, C, 2, f, t).permute(0, 1, 3, 4, 2).contiguous()
  s = torch.view_as_complex(s).reshape(b * C, f, t)
  return torch.istft(s, NFFT, HOP, window=torch.hann_window(NFFT), center=True,
                     length=L).reshape(b, C, L)


class ResBlock(nn.Module):
  """x + conv1x1(LReLU(BN(conv3x3(LReLU(x))))), then BN; (B, 64, H, W) -> same."""

  def __init__(self):
    super().__init__()
    self.c1 = nn.Conv2d(DIM, DIM, 3, padding=1, bias=False)
    self.b1 = nn.BatchNorm2d(DIM)
    self.c2 = nn.Conv2d(DIM, DIM, 1, bias=False)
    self.b2 = nn.BatchNorm2d(DIM)

  def forward(self, x):
    h = self.c2(F.leaky_relu(self.b1(self.c1(F.leaky_relu(x)))))
    return self.b2(x + h)


class Encoder(nn.Module):
  """(B, 2C, 5, 65) -> (B, 64, 5, 8)."""

  def __init__(self, n_down=3):
    super().__init__()
    layers = []
    cin = 2 * C
    for _ in range(n_down):
      layers += [nn.Conv2d(cin, DIM, (3, 4), (1, 2), (1, 1), bias=False), nn.BatchNorm2d(DIM),
                 nn.LeakyReLU()]
      cin = DIM
    layers += [ResBlock() for _ in range(NRES)]
    layers += [nn.Conv2d(DIM, DIM, 1)]
    self.net = nn.Sequential(*layers)

  def forward(self, x):
    return self.net(x)


class Decoder(nn.Module):
  """(B, 64, 5, 8) -> (B, 2C, 5, 65)."""

  def __init__(self, n_down=3, grid=(5, 65)):
    super().__init__()
    layers = [nn.Conv2d(DIM, DIM, 1)] + [ResBlock() for _ in range(NRES)]
    for _ in range(n_down - 1):
      layers += [nn.ConvTranspose2d(DIM, DIM, (3, 4), (1, 2), (1, 1), bias=False),
                 nn.BatchNorm2d(DIM), nn.LeakyReLU()]
    layers += [nn.ConvTranspose2d(DIM, 2 * C, (3, 4), (1, 2), (1, 1))]
    self.net = nn.Sequential(*layers)
    self.grid = grid

  def forward(self, z):
    return F.interpolate(self.net(z), size=self.grid, mode="bilinear", align_corners=False)


class VQ(nn.Module):
  """EMA codebook: (B, 64, H, W) -> (quantised latent, straight-through; commitment loss)."""

  def __init__(self, k=32, decay=0.9):
    super().__init__()
    self.decay = decay
    self.register_buffer("codebook", torch.randn(k, DIM))
    self.register_buffer("cluster_size", torch.ones(k))
    self.register_buffer("embed_sum", self.codebook.clone())

  def forward(self, z):
    zf = z.permute(0, 2, 3, 1).reshape(-1, DIM)
    d = (zf.pow(2).sum(1, keepdim=True) - 2 * zf @ self.codebook.t()
         + self.codebook.pow(2).sum(1)[None])
    idx = d.argmin(1)
    onehot = F.one_hot(idx, self.codebook.shape[0]).float()
    q = self.codebook[idx]
    if self.training:
      with torch.no_grad():
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ zf, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        cs = (self.cluster_size + 1e-5) / (n + 32 * 1e-5) * n
        self.codebook.copy_(self.embed_sum / cs[:, None])
    commit = F.mse_loss(zf, q.detach())
    q = zf + (q - zf).detach()
    return q.reshape(z.shape[0], z.shape[2], z.shape[3], DIM).permute(0, 3, 1, 2), commit


class Projector(nn.Module):
  """(N, 128) pooled latents -> (N, 4096)."""

  def __init__(self, din=2 * DIM, d=4096):
    super().__init__()
    self.net = nn.Sequential(nn.Linear(din, d), nn.BatchNorm1d(d), nn.ReLU(),
                             nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, d))

  def forward(self, x):
    return self.net(x)


def barlow_twins(z1, z2, lam=5e-3):
  """Barlow Twins loss of two (N, D) embeddings."""
  n = z1.shape[0]
  z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
  z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
  c = z1.t() @ z2 / n
  on = (torch.diagonal(c) - 1).pow(2).sum()
  off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
  return on + lam * off


def iternorm(x, groups=64, iters=5, eps=1e-5):
  """IterNorm whitening of (N, D) features in ``groups`` groups (batch statistics)."""
  n, d = x.shape
  xc = (x - x.mean(0)).t().reshape(groups, d // groups, n)  # (G, d, N)
  eye = torch.eye(d // groups, dtype=x.dtype).expand(groups, -1, -1)
  cov = xc @ xc.transpose(1, 2) / n + eps * eye
  tr = cov.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
  sn = cov / tr
  p = eye
  for _ in range(iters):
    p = 1.5 * p - 0.5 * torch.matrix_power(p, 3) @ sn
  w = p / tr.sqrt()
  return (w @ xc).reshape(d, n).t()


def vibcreg(z1, z2, lam=25.0, mu=25.0, nu=100.0):
  """VIbCReg loss of two (N, D) embeddings (the issue's definition, (D, D) matrices)."""
  def var(z):
    return F.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean()

  def cov(z):
    z = z - z.mean(0)
    z = z / z.norm(dim=0).clamp_min(1e-12)
    c = z.t() @ z
    c = c - torch.diag(torch.diagonal(c))
    return c.pow(2).mean()

  return (lam * F.mse_loss(z1, z2) + mu * (var(z1) + var(z2))
          + nu * (cov(z1) + cov(z2)))


class Model(nn.Module):
  """The stage-1 step's loss: forward(x, x1, x2) with (B, C, L) series and views."""

  def __init__(self, ssl=""):
    super().__init__()
    self.enc, self.vq, self.dec = Encoder(), VQ(), Decoder()
    self.ssl = ssl  # '', 'barlowtwins' or 'vibcreg'
    if ssl:
      self.proj = Projector()

  def pool(self, z):
    return torch.cat([z.mean((2, 3)), z.amax((2, 3))], 1)

  def forward(self, x, x1=None, x2=None):
    s = stft(x)
    z = self.enc(s)
    q, commit = self.vq(z)
    s_hat = self.dec(q)
    x_hat = istft(s_hat)
    loss = F.mse_loss(x_hat, x) + F.mse_loss(s_hat, s) + commit
    if self.ssl:
      p1 = self.pool(self.enc(stft(x1)))
      p2 = self.pool(self.enc(stft(x2)))
      if self.ssl == "barlowtwins":
        loss = loss + barlow_twins(self.proj(p1), self.proj(p2))
      else:
        z1, z2 = iternorm(self.proj(p1)), iternorm(self.proj(p2))
        loss = loss + 0.01 * vibcreg(z1, z2)
    return loss


class Prior(nn.Module):
  """tsgen_jax's MaskGIT prior at the reference shapes: 40 tokens of 32 codes + [MASK], a
  class token (3 classes + null), hidden 256, 4 pre-RMSNorm blocks of 2-head attention (no
  bias) and a 256 -> 256 GELU MLP, out RMSNorm, a head to the 32 codes."""

  def __init__(self, n_tok=40, codes=32, classes=3, code_dim=64, hidden=256, layers=4, heads=2):
    super().__init__()
    self.heads = heads
    self.tok = nn.Embedding(codes + 1, code_dim)
    self.tok_proj = nn.Linear(code_dim, hidden)
    self.cls = nn.Embedding(classes + 1, hidden)
    self.pos = nn.Parameter(0.02 * torch.randn(n_tok + 1, hidden))
    self.blocks = nn.ModuleList(nn.ModuleDict({
        "attn_norm": nn.RMSNorm(hidden), "qkv": nn.Linear(hidden, 3 * hidden, bias=False),
        "out": nn.Linear(hidden, hidden, bias=False), "mlp_norm": nn.RMSNorm(hidden),
        "mlp_in": nn.Linear(hidden, hidden), "mlp_out": nn.Linear(hidden, hidden)})
        for _ in range(layers))
    self.out_norm = nn.RMSNorm(hidden)
    self.head = nn.Linear(hidden, codes)

  def forward(self, tokens, cls):
    x = torch.cat([self.cls(cls)[:, None], self.tok_proj(self.tok(tokens))], 1) + self.pos
    b, s, h = x.shape
    for blk in self.blocks:
      q, k, v = blk["qkv"](blk["attn_norm"](x)).reshape(b, s, 3, self.heads, -1).permute(
          2, 0, 3, 1, 4)
      a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, h)
      x = x + blk["out"](a)
      x = x + blk["mlp_out"](F.gelu(blk["mlp_in"](blk["mlp_norm"](x))))
    return self.head(self.out_norm(x[:, 1:]))


def prior_loss(model, tokens, y, n_tok=40, codes=32, classes=3):
  """Masked-token cross-entropy (label smoothing 0.1) with MaskGIT's cosine masking and the
  class dropped to the null id with probability 0.2."""
  b = tokens.shape[0]
  n_mask = torch.ceil(torch.cos(torch.pi * torch.rand(b) / 2) * n_tok).clamp(min=1)
  rank = torch.rand(b, n_tok).argsort(1).argsort(1)
  mask = rank < n_mask[:, None]
  cls = torch.where(torch.rand(b) < 0.2, torch.full_like(y, classes), y)
  logits = model(torch.where(mask, torch.full_like(tokens, codes), tokens), cls)
  ce = F.cross_entropy(logits.reshape(-1, codes), tokens.reshape(-1), label_smoothing=0.1,
                       reduction="none").reshape(b, n_tok)
  return (ce * mask).sum() / mask.sum()


def augment(x):
  """Jitter + amplitude resize + slope, in torch (NC-VQVAE does it in numpy: +33 ms)."""
  t = torch.linspace(0, 1, L)
  x = x * (1 + 0.2 * torch.randn(x.shape[0], 1, 1))
  x = x + (torch.rand(x.shape[0], 1, 1) * 0.01 - 0.005) * t * L
  return x + 0.05 * torch.randn_like(x)


def main():
  if len(sys.argv) < 2 or sys.argv[1] not in ("plain", "barlowtwins", "vibcreg", "stage2"):
    sys.exit(__doc__)
  variant = sys.argv[1]
  iters = int(sys.argv[2]) if len(sys.argv) > 2 else 20
  cl = len(sys.argv) > 3 and sys.argv[3] == "1"
  ssl = variant if variant in ("barlowtwins", "vibcreg") else ""
  batch = STAGE2_BATCH if variant == "stage2" else B
  model = (Prior() if variant == "stage2" else Model(ssl)).train()
  if cl:
    model = model.to(memory_format=torch.channels_last)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
  x = torch.randn(B, C, L)
  tokens, y = torch.randint(0, 32, (batch, 40)), torch.randint(0, 3, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    if variant == "stage2":
      loss = prior_loss(model, tokens, y)
    elif ssl:
      loss = model(x, augment(x), augment(x))
    else:
      loss = model(x)
    loss.backward()
    opt.step()
    return loss.item()

  for _ in range(3):
    step()
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    step()
    ts.append(time.perf_counter() - t0)
  ts = np.array(ts) * 1e3
  print(f"torch {torch.__version__} {variant} B={batch} channels_last={cl} threads="
        f"{torch.get_num_threads()}: median {np.median(ts):.1f} ms, min {ts.min():.1f}, "
        f"max {ts.max():.1f}")


if __name__ == "__main__":
  main()
