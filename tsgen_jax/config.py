"""The one base config every ``configs/*.py`` file starts from.

Keys here are the stable interface of the CLI: ``--config.a.b=v`` overrides any of them, and
an unknown key is an error. Method configs (``configs/vqvae.py`` etc.) only change what makes
them different.
"""

from __future__ import annotations

import ml_collections

from tsgen_jax import augment as augment_lib
from tsgen_jax.errors import ConfigError

ALL_STAGES = ("stage1", "eval_stage1", "stage2", "sample", "eval_stage2")


def base_config() -> ml_collections.ConfigDict:
  """Returns the shared default config (plain VQ-VAE on the built-in synthetic CBF)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.run = ",".join(ALL_STAGES)  # comma-separated stages to run, in pipeline order
  c.resume_ignore_config = False  # resume even if the checkpoint's config differs
  c.skip_nonfinite = False  # log and carry on past non-finite losses instead of stopping

  c.dataset = d = ml_collections.ConfigDict()
  d.source = "synthetic"  # 'synthetic' | 'ucr' | 'npz'
  d.name = "CBF"  # synthetic: generator name; ucr: dataset folder; npz: ignored
  d.data_dir = ""  # ucr: archive root (else $TSGEN_UCR_DIR); npz: the .npz file
  d.test_path = ""  # npz only: optional separate test file (else a split of data_dir)
  d.cache_dir = ""  # TFDS array_record cache (default ~/.cache/tsgen_jax/tfds)
  d.seed = 0  # synthetic generator seed (fixed across training seeds on purpose)
  d.num_train = 30  # synthetic sizes: UCR's CBF split
  d.num_test = 900
  d.length = 128
  d.zscore = True  # global z-score with the train split's statistics
  d.stream_threshold_mb = 1024  # UCR splits larger than this stream from array_record
  d.min_class_count = 2  # a train class with fewer examples is an error (1 allows singletons)

  c.mesh = m = ml_collections.ConfigDict()
  m.data = -1  # devices on the data axis; -1 = all
  m.model = 1

  c.stft = s = ml_collections.ConfigDict()
  s.n_fft = 8
  s.hop = 0  # 0 = n_fft // 4
  s.window = "hann"  # 'hann' (later TimeVQVAE) | 'boxcar' (paper version)

  c.stage1 = s1 = ml_collections.ConfigDict()
  # CPU-sized default, the same for every variant; see README. On UCR CBF 150 steps left the
  # reconstructions of the train series blurred (FID 4.1 after stage 2 vs 1.2 with 300).
  s1.num_steps = 300
  s1.batch_size = 128
  s1.lr = 1e-3
  s1.weight_decay = 1e-5
  s1.warmup_steps = 0
  s1.dim = 64  # encoder width = codebook dim
  s1.n_resnet_blocks = 4
  s1.token_width = 8  # latent tokens along time (power-of-two downsampling of T)
  s1.matmul_dtype = "float32"  # 'float32' | 'bfloat16' (conv/matmul compute dtype)
  # Conv weight gradients summed over batch chunks of this many rows (models/conv.py). -1 =
  # auto: on a single CPU device one chunk of the whole batch (XLA's weight gradient, the
  # strided convs' input gradient by phases: benchmarks/NOTES.md items 9 and 19), off on
  # accelerators and on several devices; 0 = off (XLA's own gradients throughout).
  s1.conv_wgrad_chunk = -1
  # Train steps per compiled call (trainer.compile_steps: a rolled lax.scan, compiled once;
  # on CPU each call faults XLA's temporaries in afresh, so fewer calls: the plain step 169 ->
  # 116 ms and the prior's 722 -> 515 ms at 10 on a 2-core CPU, benchmarks/NOTES.md item 22).
  # Calls end at every checkpoint, so a divisor of checkpoint_every compiles one length. Each
  # step's metrics are still logged and checked. Changing it does not block a resume.
  s1.steps_per_call = 10
  # TimeVQVAE low/high-frequency split with two codebooks (and two priors). False = the
  # thesis' single codebook: it smooths away CBF's noise at the CPU budget (FID 45 vs 4 on
  # UCR CBF, results/stage2_study.md).
  s1.lfhf = True
  s1.recon_time_weight = 1.0
  s1.recon_tf_weight = 1.0
  s1.vq = vq = ml_collections.ConfigDict()
  vq.codebook_size = 32
  vq.ema = True  # EMA codebook updates; False = codebook loss
  vq.decay = 0.9
  vq.commitment_weight = 1.0
  vq.codebook_weight = 1.0  # only when ema=False
  vq.kmeans_init = False
  vq.kmeans_iters = 10
  vq.dead_code_restart = False
  vq.dead_code_threshold = 1e-3  # EMA cluster size below which a code is restarted
  s1.ssl = ssl = ml_collections.ConfigDict()
  ssl.method = "none"  # 'none' | 'barlowtwins' | 'vibcreg'
  ssl.weight = 0.0
  ssl.proj_dim = 4096
  ssl.pooling = "avg+max"  # 'avg' | 'max' | 'avg+max'
  ssl.aug_recon_weight = 0.0  # reconstruct the augmented view too (NC-VQVAE: 0.1)
  # Whether the views' encoder passes update the encoder's BatchNorm running statistics (and,
  # with aug_recon, the EMA codebook), as in NC-VQVAE's PyTorch code. False: only the original
  # series' pass does, so eval-mode statistics describe unaugmented data (results/stage1_study.md);
  # with aug_recon the view is then quantised with the codebook before this step's EMA update.
  ssl.view_bn_stats = True
  ssl.barlow_lambda = 5e-3
  ssl.barlow_per_dim = True  # divide the Barlow Twins loss by D (NC-VQVAE's convention)
  ssl.vib_lambda = 25.0
  ssl.vib_mu = 25.0
  ssl.vib_nu = 100.0
  ssl.iternorm_groups = 64
  ssl.iternorm_iters = 5
  ssl.augmentations = "amplitude_resize,slope,jitter"  # comma-separated, see augment.py
  ssl.aug = augment_lib.default_params()  # per-augmentation parameters
  s1.checkpoint_every = 100
  s1.keep_checkpoints = 3
  s1.log_every = 20

  c.stage2 = s2 = ml_collections.ConfigDict()
  s2.stage1_workdir = ""  # take stage 1 from another workdir; '' = this one
  s2.num_steps = 300  # CPU-sized default; see README
  # CPU-sized: the reference trains at 256. On UCR CBF, 300 steps at 128 gave FID 1.9 in
  # half the time of 256 (FID 1.2); 150 steps at 256 gave 3.0 (README, Budgets).
  s2.batch_size = 128
  s2.lr = 1e-3
  s2.weight_decay = 1e-5
  s2.warmup_steps = 0
  s2.hidden_dim = 256
  s2.n_layers = 4
  s2.n_heads = 2
  s2.ff_mult = 1
  s2.dropout = 0.0
  s2.p_unconditional = 0.2
  s2.label_smoothing = 0.1
  s2.matmul_dtype = "float32"  # 'bfloat16': bf16 operands, float32 accumulation and results
  s2.steps_per_call = 10  # as stage1.steps_per_call
  s2.checkpoint_every = 100
  s2.keep_checkpoints = 3
  s2.log_every = 50

  c.sample = sm = ml_collections.ConfigDict()
  sm.num_samples = 256
  sm.class_label = -1  # -1: all classes in their train proportions
  sm.guidance_scale = 1.0
  sm.num_steps = 10  # T, iterative decoding steps
  sm.choice_temperature = 4.0
  sm.mask_schedule = "cosine"  # 'cosine' | 'linear' | 'square'
  # Series per sampler call. 64 is the fastest on a 2-core CPU (256 series in 4 calls of 64
  # took 4-8 % less time than in one of 256: the activations stay in cache; benchmarks/NOTES.md
  # item 17); raise it on accelerators.
  sm.batch_size = 64
  # Decoding runs as at most this many fori_loops; each computes the last block and the head
  # only at its steps' [MASK] positions (sampling.iterative_decode). 0: at every position.
  sm.masked_logits_segments = 3
  sm.original_scale = False  # map samples back to the data's original scale
  # The sampler's matmuls: '' (as stage2.matmul_dtype), 'float32' or 'bfloat16' (mixed
  # precision, as stage2.matmul_dtype='bfloat16'; on an AVX512-BF16 CPU ~1.5x the series/s,
  # benchmarks/NOTES.md item 21). Independent of how the prior was trained.
  sm.matmul_dtype = ""

  c.eval = ev = ml_collections.ConfigDict()
  ev.num_plot_per_class = 3
  ev.fcn_steps = 500  # evaluator FCN training steps (batch 256); ~96% test acc on CBF
  ev.cas_seeds = 1  # CAS FCNs (seeds seed, seed+1, ...) averaged; ~3 min of 2-core CPU each
  ev.fcn_cache_dir = ""  # default ~/.cache/tsgen_jax/fcn
  ev.rocket_kernels = 1000
  return c


# (section, key, minimum) of integer settings that must be whole numbers >= minimum.
_INTS = [
    ("dataset", "num_train", 1), ("dataset", "num_test", 1), ("dataset", "length", 2),
    ("mesh", "model", 1), ("stft", "n_fft", 2), ("stft", "hop", 0),
    ("stage1", "num_steps", 0), ("stage1", "batch_size", 1), ("stage1", "warmup_steps", 0),
    ("stage1", "dim", 1), ("stage1", "n_resnet_blocks", 0), ("stage1", "token_width", 1),
    ("stage1", "checkpoint_every", 1), ("stage1", "keep_checkpoints", 1),
    ("stage1", "log_every", 1), ("stage1", "steps_per_call", 1),
    ("stage1.vq", "codebook_size", 2),
    ("stage1.vq", "kmeans_iters", 1), ("stage1.ssl", "proj_dim", 1),
    ("stage2", "num_steps", 0), ("stage2", "batch_size", 1), ("stage2", "warmup_steps", 0),
    ("stage2", "hidden_dim", 1), ("stage2", "n_layers", 1), ("stage2", "n_heads", 1),
    ("stage2", "ff_mult", 1), ("stage2", "checkpoint_every", 1),
    ("stage2", "keep_checkpoints", 1), ("stage2", "log_every", 1),
    ("stage2", "steps_per_call", 1),
    ("sample", "num_samples", 1), ("sample", "num_steps", 1), ("sample", "batch_size", 1),
    ("sample", "masked_logits_segments", 0),
    ("eval", "fcn_steps", 1), ("eval", "cas_seeds", 1), ("eval", "rocket_kernels", 1),
]
_POSITIVE = [("stage1", "lr"), ("stage2", "lr")]
_NONNEGATIVE = [("stage1", "weight_decay"), ("stage2", "weight_decay"),
                ("stage1.ssl", "weight"), ("stage1.ssl", "aug_recon_weight"),
                ("stage2", "label_smoothing"), ("sample", "choice_temperature"),
                ("sample", "guidance_scale")]


def _get(cfg, dotted):
  node = cfg
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(cfg) -> None:
  """Checks value ranges a typo could break; raises ConfigError naming the key."""
  for section, key, lo in _INTS:
    v = _get(cfg, section)[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
      raise ConfigError(f"config.{section}.{key}={v!r}: expected an integer >= {lo}")
  if cfg.mesh.data != -1 and (not isinstance(cfg.mesh.data, int) or cfg.mesh.data < 1):
    raise ConfigError(f"config.mesh.data={cfg.mesh.data!r}: expected -1 or an integer >= 1")
  for section, key in _POSITIVE:
    if not _get(cfg, section)[key] > 0:
      raise ConfigError(f"config.{section}.{key}={_get(cfg, section)[key]!r}: expected > 0")
  for section, key in _NONNEGATIVE:
    if not _get(cfg, section)[key] >= 0:
      raise ConfigError(f"config.{section}.{key}={_get(cfg, section)[key]!r}: expected >= 0")
  if not 0.0 <= cfg.stage1.vq.decay < 1.0:
    raise ConfigError(f"config.stage1.vq.decay={cfg.stage1.vq.decay!r}: expected in [0, 1)")
  if not 0.0 <= cfg.stage2.p_unconditional <= 1.0:
    raise ConfigError("config.stage2.p_unconditional must lie in [0, 1]")
  if cfg.stft.window not in ("hann", "boxcar"):
    raise ConfigError(f"config.stft.window={cfg.stft.window!r}: expected 'hann' or 'boxcar'")
  if cfg.sample.mask_schedule not in ("cosine", "linear", "square"):
    raise ConfigError(f"config.sample.mask_schedule={cfg.sample.mask_schedule!r}: expected "
                      "'cosine', 'linear' or 'square'")
  if cfg.stage1.matmul_dtype not in ("float32", "bfloat16") or \
      cfg.stage2.matmul_dtype not in ("float32", "bfloat16"):
    raise ConfigError("config.stage*.matmul_dtype must be 'float32' or 'bfloat16'")
  if cfg.sample.matmul_dtype not in ("", "float32", "bfloat16"):
    raise ConfigError(f"config.sample.matmul_dtype={cfg.sample.matmul_dtype!r}: expected '' (as "
                      "stage2.matmul_dtype), 'float32' or 'bfloat16'")
  if cfg.stage1.conv_wgrad_chunk < -1:
    raise ConfigError(f"config.stage1.conv_wgrad_chunk={cfg.stage1.conv_wgrad_chunk!r}: expected "
                      "-1 (auto), 0 (off) or a number of rows > 0")
