r"""Baseline: the `small` CNN on the offline `shapes` dataset (6 classes, 32x32 RGB, generated locally).

  python launch.py --experiment=shapes --workdir=/tmp/cnnjax/shapes

About 30 s of training on 2 CPU cores, plus ~10 s to generate the dataset on first use (9,167 training
images, 833 validate; chance 1/6). Expected accuracy and time: results/install/cpu.json (README, Experiments).
Every other experiment imports this config and overrides a few fields; any field can be overridden from the
command line, e.g. --config.model.stride=2 --config.model.pool=avg --config.batch_size=256.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The baseline config; every field a run reads is here."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # The root key's PRNG: rbg (XLA's RngBitGenerator) compiles 3-5x faster on CPU than threefry2x32, which
  # gives bit-identical random streams on every backend.
  config.rng_impl = 'rbg'
  config.seeds = 1  # sweeps: run every point with seeds seed, seed + 1, ... and report mean ± std
  config.baseline_point = ''  # sweeps: the point every other is compared with ('' = the first)
  # Sweeps: train every point once per learning rate, e.g. (1e-3, 3e-3, 1e-2), pick by the validation metric
  # and report the pick's test metrics only. () = optimizer.learning_rate alone.
  config.lr_grid = ()
  # While the pick lies on the grid's edge, train the next value beyond it (the grid's ratio), up to this often.
  config.lr_grid_extensions = 2
  # Whose validation picks a sweep point's rate: run (every seed picks its own from the grid) | point (the first
  # seed picks, then the other seeds train at its pick only: ~1/len(grid) of the other seeds' cost) | halving (with
  # budgets: the mean over the seeds picks at each budget; the better half of the rates goes on to the next one).
  config.lr_pick = 'run'
  config.skip_nonfinite = False  # True: skip updates whose gradients are NaN/Inf instead of stopping the run
  config.head = 'multiclass'  # multiclass (softmax CE) | binary (sigmoid BCE) | regression (linear, MSE)
  config.label_smoothing = 0.0  # classification heads: train on targets mixed with this much of uniform
  # Evaluate on each image and its left-right mirror, averaging the outputs (test-time augmentation; for models
  # trained with data.augment_flip).
  config.eval_flip = False
  # Also evaluate on each image shifted by this many pixels diagonally both ways (reflected borders): outputs are
  # half the unshifted ones plus a quarter of each shifted one's (0 = off; test-time augmentation).
  config.eval_translate = 0

  config.data = ml_collections.ConfigDict()
  # shapes | digits (offline) | mnist | fashion_mnist | cifar10 | cats_vs_dogs, or your own data:
  # folder:PATH (one folder of images per class, or PATH/train/<class> and PATH/test/<class>) | npz:PATH (x_train,
  # y_train, x_test, y_test); prepared once into --data_dir (docs/data.md).
  config.data.name = 'shapes'
  config.data.image_size = 0  # 0 = the dataset's own (shapes: 32; 8..224 generates another size; folder: 224)
  config.data.grayscale = False  # folder: images as one gray channel instead of RGB
  # The last 1/12 of the train split is the validation split (5,000 of MNIST's and Fashion-MNIST's 60,000):
  # periodic evaluations and every choice use it; the test split is evaluated once, at the end. 0 = none
  # (periodic evaluations on test).
  config.data.val_fraction = 1 / 12
  # mnist / fashion_mnist: a directory of the four original IDX files to prepare the dataset from, offline
  # ('' = fashion_mnist: /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist; mnist: download).
  config.data.source_dir = ''
  config.data.positive_class = 0  # binary head on a multi-class dataset: label == positive_class
  config.data.regression_target = 'size'  # regression head: a numeric feature (shapes: size, center)
  config.data.augment_flip = False
  config.data.augment_crop = False
  config.data.crop_padding = 4
  # Random erasing (Zhong et al. 2020): with this probability, one rectangle of 2-40 % of the image, aspect 0.3-3.3,
  # is set to the dataset's mean (0 after normalisation).
  config.data.random_erasing = 0.0
  # Where batches are made: host (the prepared arrays read on the host, memory-mapped) | device (every split on
  # every device) | auto (device when the splits take at most a quarter of the device's memory, else host). Both
  # draw the same batches and augment them inside the jitted step.
  config.data.pipeline = 'auto'
  config.data.prefetch = 2
  config.data.download_timeout_s = 300  # datasets that need a download: give up (with advice) after this

  config.model = ml_collections.ConfigDict()
  config.model.variant = 'small'  # models.VARIANTS: tiny | small | base | large
  config.model.features = ()  # conv widths per block; () = the variant's
  config.model.dense = ()  # dense widths before the output layer; () = the variant's
  config.model.kernel_size = 3
  config.model.kernel_sizes = ()  # one kernel side per conv block, e.g. (5, 5, 1); () = kernel_size everywhere
  config.model.stride = 1
  config.model.padding = 'SAME'  # SAME | VALID | an int such as '1'
  config.model.dilation = 1
  config.model.activation = 'relu'
  config.model.pool = 'max'  # max | avg | none
  config.model.pool_window = 2
  config.model.pool_stride = 2
  config.model.pool_padding = 'VALID'  # VALID drops a last partial window (7 -> 3) | SAME keeps it (7 -> 4), as Keras'
  config.model.pool_blocks = ()  # the conv blocks (from 0) that pool, e.g. (1, 3); () = every block
  config.model.block_dropout = 0.0  # dropout after each pool
  config.model.conv_impl = 'xla'  # xla (lax.conv_general_dilated) | im2col (patches @ kernel; same result)
  config.model.flip_kernel = False  # True: true convolution (flipped kernel) instead of cross-correlation
  config.model.first_layer = 'learned'  # learned | gaussian | sobel | gaussian_sobel (frozen filters)
  config.model.norm = 'none'  # none | batch | layer | group: after each conv, before its activation
  config.model.norm_groups = 8  # norm=group: channel groups (must divide every conv width)
  config.model.norm_scale = True  # False: the norm learns a bias only, its scale fixed at 1 (airbench's BatchNorm)
  # Learned conv kernels: lecun_normal | dirac (the first min(C_in, C_out) filters start as the identity, airbench's)
  config.model.conv_init = 'lecun_normal'
  config.model.dropout = 0.0  # after each hidden dense layer
  config.model.dense_norm = 'none'  # none | batch: after each hidden dense layer's activation, before its dropout
  config.model.dtype = 'float32'

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'  # sgd | momentum | adam | adamw
  config.optimizer.learning_rate = 3e-3
  # constant | cosine | warmup_cosine | warmup_constant | triangular (up over the warm-up, then linearly to 0) |
  # wsd (warmup-stable-decay: up over the warm-up, constant, then linearly to 0 over the last cooldown_fraction)
  config.optimizer.schedule = 'warmup_cosine'
  config.optimizer.warmup_steps = 50
  config.optimizer.cooldown_fraction = 0.2  # wsd: the share of the steps over which the rate decays to 0
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0  # adamw's decoupled weight decay; the other optimizers refuse one above 0
  config.optimizer.grad_clip_norm = 1.0  # 0 = no clipping
  # Evaluate an exponential moving average of the weights, updated after every step with this decay (0 = none).
  config.optimizer.ema_decay = 0.0
  # Keras's max_norm constraint on the hidden dense layers: each unit's incoming weights are scaled back to at
  # most this Euclidean norm after every update (0 = none).
  config.optimizer.dense_max_norm = 0.0

  config.parallel = 'pmap'  # pmap (jax.pmap over local devices) | shard_map (jax.jit of jax.shard_map, 1-D mesh)
  config.batch_size = 128  # global: split over all devices
  config.eval_batch_size = 256
  # Per-device examples per forward/backward pass: a larger per-device batch (a multiple of it) is split into
  # micro-batches whose gradients are summed by a lax.scan (the same gradient up to rounding), which keeps
  # activations in cache on CPU (docs/performance.md). 0 = the whole per-device batch at once. auto = up to 64
  # on CPU (the whole batch with BatchNorm), the whole batch on GPU/TPU. 'auto' or an int.
  config.microbatch_size = ml_collections.FieldReference('auto', field_type=object)
  # XLA:CPU's faster forms of the same values: a two-step bias broadcast, NHWC/HWIO conv gradients and
  # two-step BatchNorm reductions.
  # auto = on for CPU only | on | off.
  config.cpu_speedups = 'auto'
  # Training steps per call to the devices, run by a lax.scan inside one program (the device pipeline only; a
  # call ends at every log, eval and checkpoint step). auto = several on the device pipeline (train.platform_choices),
  # else 1. 'auto' or an int >= 1.
  config.steps_per_dispatch = ml_collections.FieldReference('auto', field_type=object)
  # Sweeps: train a point's seeds x learning rates as one program, each member's state on a leading axis of one
  # state (jax.vmap; the device pipeline and rng_impl=threefry2x32, whose draws vmap leaves unchanged): each
  # member equals its solo run to float32 rounding. auto = on for GPU/TPU with threefry2x32, off on CPU, where
  # vmapped convolutions run slower per member (benchmarks/population.py) | on | off.
  config.population = 'auto'
  # How a population maps its step over the members: vmap (one batched program; a member equals its solo run to
  # float32 rounding, which training can amplify) | loop (jax.lax.map: each member the solo run's own program,
  # equal to the last bit on CPU) | auto = loop on CPU, vmap on GPU/TPU.
  config.population_map = 'auto'
  config.num_train_steps = 1000
  # Several budgets from one run, as fractions of num_train_steps ending at 1.0, e.g. (0.25, 0.5, 1.0): with
  # optimizer.schedule=wsd, each shorter budget's cooldown branches from the run's constant phase and is a run of
  # its own in WORKDIR/budget=<fraction>; its metrics are '<budget=fraction>/<metric>'. () = one budget.
  config.budgets = ()
  config.log_every_steps = 50
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  # Which weights the test split evaluates: 'last' (the end of training) or 'best_val' (of the periodic
  # validation evaluations, the best by validation accuracy, or loss without one: the epochs chosen on
  # validation; kept in WORKDIR/best_checkpoint).
  config.test_checkpoint = 'last'

  config.analysis = ml_collections.ConfigDict()
  config.analysis.invariance_shifts = 0  # sweeps: > 0 measures accuracy under input shifts of 0..k pixels
  return config
