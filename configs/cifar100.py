"""CIFAR-100 with a CIFAR ResNet-18: the CIFAR-10 recipe on 100 classes.

  python -m sgd_quad.main --config=configs/cifar100.py --workdir=DIR \
    --config.data.data_dir=TFDS_DIR

Expected: about 77% test accuracy; roughly 1.5 hours on one modern GPU.
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.data.name = 'cifar100'
  return config
