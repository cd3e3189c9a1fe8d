"""ImageNet ResNet-50 with SWA over the last 10 epochs.

  python -m sgd_quad.main --config=configs/imagenet_swa.py \
    --workdir=gs://BUCKET/run --config.data.data_dir=gs://BUCKET/tfds

The ResNet-50 recipe with a uniform average of one snapshot per 1/10 epoch
from epoch 80 on, its BatchNorm statistics recomputed from 50 training
batches at each evaluation (as SWA prescribes). 6-7 hours on a TPU v4-32.
"""

from configs import imagenet_resnet50


def get_config():
  config = imagenet_resnet50.get_config()
  steps = imagenet_resnet50.STEPS_PER_EPOCH
  config.averaging.swa = True
  config.averaging.swa_start = 80 * steps
  config.averaging.swa_period = steps // 10
  config.averaging.swa_bn = 'recompute'
  config.averaging.recompute_batches = 50
  return config
