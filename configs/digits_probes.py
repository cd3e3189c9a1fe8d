"""Mini-batch loss probes on the digits in a noisy regime (E1, E2, E3, E5).

  python -m sgd_quad.main --config=configs/digits_probes.py \
    --workdir=/tmp/digits_probes

The default digits run drives the training loss to nearly zero, which hides
the effect, so this run stays noisy: a constant, high LR after a short
warmup, random one-pixel shifts and label smoothing 0.1. Probes run early,
mid-way and late, in both BatchNorm modes: the loss of B_t and of fixed
held-out batches along -g_B, with quadratic fits, gradient statistics and the
top Hessian eigenvalue; curves and figures land in <workdir>/probes.
Expected: about two minutes on a 2-core CPU.
"""

from configs import digits


def get_config():
  config = digits.get_config()
  config.data.augment = 'shift'
  config.optimizer.learning_rate = 0.2
  config.optimizer.label_smoothing = 0.1
  config.schedule.name = 'constant'
  config.schedule.warmup_steps = 20
  config.num_steps = 1500
  config.eval_every = 500
  config.checkpoint.every = 500
  config.averaging.ema_decays = ()
  config.averaging.swa = False
  config.averaging.two_point_gaps = ()
  config.probes.steps = (25, 750, 1499)
  config.probes.bn_modes = ('batch', 'running')
  config.probes.num_test_batches = 1  # all 360 test digits in one batch
  return config
