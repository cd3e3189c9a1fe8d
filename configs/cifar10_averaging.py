"""CIFAR-10 ResNet-18 at a constant LR with every averager tracked.

  python -m sgd_quad.main --config=configs/cifar10_averaging.py \
    --workdir=DIR --config.data.data_dir=TFDS_DIR

A constant LR after warmup keeps SGD near its stationary distribution, where
averaging acts as an LR cut. Tracks EMAs (0.999, 0.9999), SWA from epoch 50,
LAWA over the last 5 epoch snapshots, and two-point averages at gaps of 2 and
10 epochs; each evaluation (every 2 epochs) scores all of them. About 1 hour
on one modern GPU.
"""

from configs import cifar10

STEPS_PER_EPOCH = 50_000 // 128


def get_config():
  config = cifar10.get_config()
  config.schedule.name = 'constant'
  config.num_steps = 100 * STEPS_PER_EPOCH
  config.eval_every = 2 * STEPS_PER_EPOCH
  config.checkpoint.every = 2 * STEPS_PER_EPOCH
  config.averaging.ema_decays = (0.999, 0.9999)
  config.averaging.swa_start = 50 * STEPS_PER_EPOCH
  config.averaging.swa_period = STEPS_PER_EPOCH // 10
  config.averaging.lawa_snapshots = 5
  config.averaging.lawa_period = STEPS_PER_EPOCH
  config.averaging.two_point_gaps = (2 * STEPS_PER_EPOCH, 10 * STEPS_PER_EPOCH)
  return config
