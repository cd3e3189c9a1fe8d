"""E4 on the bundled digits: distances between branches of one checkpoint.

  python -m sgd_quad.experiments.distances \
    --config=configs/digits_distances.py --workdir=/tmp/digits_distances

From the constant-LR base run of configs/digits_equivalence.py at step 1000,
three copies train for 500 steps at the LR and at half of it: one, a copy
fed the same batches, and a copy fed another batch order, both copies
kicked by Gaussian noise of 0.1% of the weights' norm. The distance is
measured every 10 steps. Expected: about 2 minutes on a 2-core CPU.
"""

from configs import digits_equivalence


def get_config():
  config = digits_equivalence.get_config()
  config.averaging.ema_decays = ()
  config.averaging.swa = False
  config.averaging.two_point_gaps = ()
  config.experiment.name = 'distances'
  config.experiment.branch_steps = 500
  config.experiment.distance_every = 10
  config.experiment.distance_lr_factors = (1.0, 0.5)
  config.experiment.perturbation = 1e-3
  return config
