"""The default run: a small ResNet on the bundled handwritten digits.

  python -m sgd_quad.main --config=configs/digits.py --workdir=/tmp/digits

Trains on the 1,797 real 8x8 digit scans that ship inside scikit-learn
(prepared once as a tfds dataset, no network), with SGD + momentum and a
cosine schedule, and tracks EMA, SWA and two-point averages of the weights.
Expected: about a minute on a 2-core CPU, test accuracy above 95%.

Other configs import this one and change a few fields.
"""

import ml_collections

from sgd_quad import averaging, data, probing


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.init_seed = 0
  config.data_seed = 0

  config.data = data.default_config()
  config.data.name = 'digits'

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet_digits'
  config.model.dtype = 'float32'
  config.model.bn_momentum = 0.9
  config.model.ghost_batch_size = 0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decoupled_weight_decay = False
  config.optimizer.label_smoothing = 0.0

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 50
  config.schedule.boundaries = ()  # piecewise: steps where LR is scaled
  config.schedule.decay_factor = 0.1  # piecewise: the scale at each boundary
  config.schedule.decay_start = 0  # inverse_time: first decayed step
  config.schedule.decay_steps = 100.0  # inverse_time: lr / (1 + t / this)
  config.schedule.file = ''  # file: .npy array, entry i = LR of step i

  config.batch_size = 128
  config.eval_batch_size = 512
  config.num_steps = 1000
  config.log_every = 100
  config.eval_every = 250

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 250
  config.checkpoint.keep = 3

  config.averaging = averaging.default_config()
  config.averaging.ema_decays = (0.99,)
  config.averaging.swa = True
  config.averaging.swa_start = 500
  config.averaging.two_point_gaps = (250,)

  config.probes = probing.default_config()  # off: no probe steps

  # Branching: start from another run's checkpoint (empty: a fresh start).
  config.init_from = ''
  config.init_from_step = -1  # -1: its latest checkpoint
  config.init_from_opt_state = 'keep'  # or 'reset' the momentum
  return config
