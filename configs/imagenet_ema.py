"""ImageNet ResNet-50 with an EMA of the weights: the config users start from.

  python -m sgd_quad.main --config=configs/imagenet_ema.py \
    --workdir=gs://BUCKET/run --config.data.data_dir=gs://BUCKET/tfds

The ResNet-50 recipe of `imagenet_resnet50.py` plus EMAs with decays 0.9998
and 0.99995 (time constants of about 4 and 16 epochs at 1251 steps per epoch),
started after the first epoch, with averaged BatchNorm statistics. Every
evaluation scores the raw and both averaged models. Expected: about 77% top-1
for the raw model, the EMAs a little above it before the LR has decayed;
6-7 hours on a TPU v4-32 slice.
"""

from configs import imagenet_resnet50


def get_config():
  config = imagenet_resnet50.get_config()
  config.averaging.ema_decays = (0.9998, 0.99995)
  config.averaging.ema_start = imagenet_resnet50.STEPS_PER_EPOCH
  config.averaging.ema_bn = 'average'
  return config
