"""ImageNet ResNet-34 at a constant LR with two-point averages (claim 4).

  python -m sgd_quad.main --config=configs/imagenet_two_point.py \
    --workdir=gs://BUCKET/run --config.data.data_dir=gs://BUCKET/tfds

ResNet-34, SGD with momentum 0.9 as in the paper, held at a constant LR after
warmup so that the iterate fluctuates around a stationary distribution; at
every evaluation (each epoch) 0.5 * (theta_t + theta_{t-k}) is scored for gaps
of 1, 2 and 5 epochs, next to the last iterate. The model predicts a clear
gain when k is well above the relaxation time. The snapshot rings cost about
4 parameter copies per gap (checked against memory_budget_mb at start-up).
About 5 hours on a TPU v4-32.
"""

from configs import imagenet_resnet50


def get_config():
  config = imagenet_resnet50.get_config()
  steps = imagenet_resnet50.STEPS_PER_EPOCH
  config.model.name = 'resnet34'
  config.optimizer.label_smoothing = 0.0
  config.schedule.name = 'constant'
  config.num_steps = 40 * steps
  config.eval_every = steps
  config.checkpoint.every = steps
  config.averaging.two_point_gaps = (steps, 2 * steps, 5 * steps)
  config.averaging.two_point_bn = 'average'
  return config
