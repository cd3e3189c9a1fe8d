"""ImageNet (imagenet2012) with ResNet-50 v1.5, 90 epochs of SGD + momentum.

  python -m sgd_quad.main --config=configs/imagenet_resnet50.py \
    --workdir=gs://BUCKET/run --config.data.data_dir=gs://BUCKET/tfds

Global batch 1024, LR 0.4 (0.1 per 256) with 5 warmup epochs and cosine
decay, weight decay 1e-4, label smoothing 0.1, bfloat16 compute, random-resized
crops. Expected: about 77% top-1; roughly 6-7 hours on a TPU v4-32 pod slice
or 8 H100s. Needs imagenet2012 prepared in ArrayRecord format (manual
download; the error message gives the tfds command).
"""

from configs import digits

STEPS_PER_EPOCH = 1_281_167 // 1024


def get_config():
  config = digits.get_config()
  config.data.name = 'imagenet2012'
  config.data.num_workers = 32
  config.data.prefetch = 4
  config.data.train_eval_examples = 10_000
  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'
  config.batch_size = 1024
  config.eval_batch_size = 1000
  config.num_steps = 90 * STEPS_PER_EPOCH
  config.optimizer.learning_rate = 0.4
  config.optimizer.weight_decay = 1e-4
  config.optimizer.label_smoothing = 0.1
  config.schedule.warmup_steps = 5 * STEPS_PER_EPOCH
  config.log_every = 100
  config.eval_every = 5 * STEPS_PER_EPOCH
  config.checkpoint.every = STEPS_PER_EPOCH
  config.averaging.ema_decays = ()
  config.averaging.swa = False
  config.averaging.two_point_gaps = ()
  return config
