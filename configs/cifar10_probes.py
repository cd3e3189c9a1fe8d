"""Mini-batch loss probes on CIFAR-10 with a CIFAR ResNet-18 (E1, E2, E3, E5).

  python -m sgd_quad.main --config=configs/cifar10_probes.py --workdir=DIR \
    --config.data.data_dir=TFDS_DIR

The classic recipe of configs/cifar10.py held at its peak LR 0.1 (after one
warmup epoch) for 60 epochs, so the trajectory stays in the noisy regime the
probes study. Probes run at steps 100 and 1000, then every 10 epochs, in both
BatchNorm modes, with the top Hessian eigenvalue of the direction batch
overall and per layer. Curves and figures land in <workdir>/probes.
Expected: about 40 minutes on one modern GPU, most of it training.
"""

from configs import cifar10

EPOCH = 50_000 // 128


def get_config():
  config = cifar10.get_config()
  config.schedule.name = 'constant'
  config.schedule.warmup_steps = EPOCH
  config.num_steps = 60 * EPOCH
  config.eval_every = 10 * EPOCH
  config.checkpoint.every = 10 * EPOCH
  config.averaging.ema_decays = ()
  config.averaging.swa = False
  config.averaging.two_point_gaps = ()
  config.probes.steps = (100, 1000)
  config.probes.every = 10 * EPOCH
  config.probes.bn_modes = ('batch', 'running')
  config.probes.hessian_iters = 20
  config.probes.hessian_per_layer = True
  return config
