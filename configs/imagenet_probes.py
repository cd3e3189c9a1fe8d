"""Mini-batch loss probes on ImageNet with ResNet-34, as in the paper.

  python -m sgd_quad.main --config=configs/imagenet_probes.py \
    --workdir=gs://BUCKET/run --config.data.data_dir=gs://BUCKET/tfds

ResNet-34 with SGD and heavy-ball momentum 0.9, the ImageNet recipe of
configs/imagenet_resnet50.py otherwise (global batch 1024, LR 0.4 after 5
warmup epochs, cosine decay over 90 epochs). Probes run early (steps 100 and
1000), then every 5 epochs, in both BatchNorm modes: the loss of B_t and of
fixed held-out training and test batches along -g_B, with quadratic fits,
gradient statistics over 8 batches and the top Hessian eigenvalue of the
direction batch, overall and per layer. Expected: about 7 hours on a TPU
v4-32 pod slice or 8 H100s, the probes adding a few minutes each.
"""

from configs import imagenet_resnet50

EPOCH = imagenet_resnet50.STEPS_PER_EPOCH


def get_config():
  config = imagenet_resnet50.get_config()
  config.model.name = 'resnet34'
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.probes.steps = (100, 1000)
  config.probes.every = 5 * EPOCH
  config.probes.bn_modes = ('batch', 'running')
  config.probes.hessian_iters = 20
  config.probes.hessian_per_layer = True
  return config
