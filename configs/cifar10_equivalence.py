"""E6/E7 on CIFAR-10: averaging against its equivalent schedule, ResNet-18.

  python -m sgd_quad.experiments.equivalence \
    --config=configs/cifar10_equivalence.py --workdir=DIR \
    --config.data.data_dir=TFDS_DIR

The CIFAR-10 recipe of configs/cifar10.py held at a constant LR 0.1 after
one warmup epoch: the base run trains 100 epochs, then branch A trains 50
more at the same LR with EMAs (0.999, 0.9999), SWA from the branch and
two-point averages at 2 and 10 epochs, and one branch B per averaged model
follows the schedule matched from the probes at the branch point. The same
config drives two_point_gains, schedule_gain, distances and seeds. Expected:
about 45 minutes for the base and 20 per branch on one modern GPU, about 2.5
hours in all.
"""

from configs import cifar10
from sgd_quad import experiments

EPOCH = 50_000 // 128


def get_config():
  config = cifar10.get_config()
  config.schedule.name = 'constant'
  config.schedule.warmup_steps = EPOCH
  config.num_steps = 150 * EPOCH  # the branches end; the base stops at t0
  config.eval_every = 10 * EPOCH
  config.checkpoint.every = 10 * EPOCH
  config.averaging.ema_decays = (0.999, 0.9999)
  config.averaging.swa = True
  config.averaging.swa_start = 100 * EPOCH
  config.averaging.swa_period = EPOCH // 10
  config.averaging.two_point_gaps = (2 * EPOCH, 10 * EPOCH)

  config.experiment = experiments.default_config()
  config.experiment.name = 'equivalence'
  config.experiment.branch_step = 100 * EPOCH
  config.experiment.branch_steps = 50 * EPOCH
  config.experiment.eval_every = EPOCH
  config.experiment.estimate_batches = 16
  config.experiment.two_point_gaps = (EPOCH // 4, EPOCH, 2 * EPOCH, 5 * EPOCH)
  config.experiment.seeds = (0, 1, 2)
  return config
