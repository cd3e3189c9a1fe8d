"""CIFAR-10 with a CIFAR ResNet-18, the classic 200-epoch SGD recipe.

  python -m sgd_quad.main --config=configs/cifar10.py --workdir=DIR \
    --config.data.data_dir=TFDS_DIR

Needs cifar10 prepared in ArrayRecord format under TFDS_DIR (the error message
gives the command when it is missing). Batch 128, SGD momentum 0.9, LR 0.1
with cosine decay, weight decay 5e-4, pad-4 crop and flip. Expected: about
95% test accuracy; roughly 1.5 hours on one modern GPU.
"""

from configs import digits


def get_config():
  config = digits.get_config()
  config.data.name = 'cifar10'
  config.model.name = 'resnet18_cifar'
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_steps = 200 * 390  # 200 epochs of 50,000 / 128 steps
  config.schedule.warmup_steps = 390
  config.log_every = 200
  config.eval_every = 3900
  config.checkpoint.every = 3900
  config.averaging.ema_decays = (0.999, 0.9999)
  config.averaging.swa_start = 150 * 390
  config.averaging.swa_period = 39
  config.averaging.two_point_gaps = (3900,)
  return config
