"""E6/E7 on ImageNet with ResNet-34, SGD momentum 0.9, as in the paper.

  python -m sgd_quad.experiments.equivalence \
    --config=configs/imagenet_equivalence.py --workdir=gs://BUCKET/eq \
    --config.data.data_dir=gs://BUCKET/tfds

The ResNet-34 setting of configs/imagenet_two_point.py at a constant LR: the
base run trains 16 epochs, then branch A trains 8 more at the same LR with an
EMA (0.9998), SWA from the branch and two-point averages at 1 and 2 epochs,
and one branch B per averaged model follows the schedule matched from the
probes at the branch point (single effective direction). Evaluates every
half epoch. Expected: about 2 hours for the base and 1 per branch on a TPU
v4-32, about 6 hours in all.
"""

from configs import imagenet_resnet50, imagenet_two_point
from sgd_quad import experiments

EPOCH = imagenet_resnet50.STEPS_PER_EPOCH


def get_config():
  config = imagenet_two_point.get_config()
  config.num_steps = 24 * EPOCH  # the branches end; the base stops at t0
  config.eval_every = EPOCH
  config.checkpoint.every = EPOCH
  config.averaging.ema_decays = (0.9998,)
  config.averaging.swa = True
  config.averaging.swa_start = 16 * EPOCH
  config.averaging.swa_period = EPOCH // 20
  config.averaging.two_point_gaps = (EPOCH, 2 * EPOCH)
  config.averaging.two_point_bn = 'average'

  config.experiment = experiments.default_config()
  config.experiment.name = 'equivalence'
  config.experiment.branch_step = 16 * EPOCH
  config.experiment.branch_steps = 8 * EPOCH
  config.experiment.eval_every = EPOCH // 2
  config.experiment.estimate_batches = 8
  config.experiment.two_point_gaps = (EPOCH // 4, EPOCH, 2 * EPOCH, 4 * EPOCH)
  config.experiment.seeds = (0, 1, 2)
  return config
