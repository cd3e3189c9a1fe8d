"""E6/E7 on the bundled digits: averaging against its equivalent schedule.

  python -m sgd_quad.experiments.equivalence \
    --config=configs/digits_equivalence.py --workdir=/tmp/digits_equivalence

A base run in the noisy regime of configs/digits_probes.py (constant LR 0.2
after a short warmup, momentum 0.9, one-pixel shifts, label smoothing 0.1)
trains to step 1000. Branch A continues at the same LR for 1000 steps with an
EMA (decay 0.99), SWA from the branch point and a two-point average at gap
250 tracked; one branch B per averaged model trains without averaging on the
LR schedule that `sgd_quad.theory.match_schedule` finds for it, from a single
effective direction estimated by the probes at step 1000. Writes
equivalence.png and the discrepancies (metrics.jsonl, kind 'equivalence').
Expected: about 5 minutes on a 2-core CPU. The same config drives E8, E9, E4
and the seeds runner (`experiment.name` picks what `seeds` repeats).
"""

from configs import digits
from sgd_quad import experiments


def get_config():
  config = digits.get_config()
  config.data.augment = 'shift'
  config.optimizer.learning_rate = 0.2
  config.optimizer.label_smoothing = 0.1
  config.schedule.name = 'constant'
  config.schedule.warmup_steps = 20
  # The base run trains to experiment.branch_step and the branches to
  # branch_step + branch_steps, which the averaging block is checked against.
  config.num_steps = 2000
  config.eval_every = 100
  config.checkpoint.every = 500

  config.averaging.ema_decays = (0.99,)
  config.averaging.swa = True
  config.averaging.swa_start = 1000  # = branch_step: SWA from the branch
  config.averaging.two_point_gaps = (250,)

  config.experiment = experiments.default_config()
  config.experiment.name = 'equivalence'
  config.experiment.branch_step = 1000
  config.experiment.branch_steps = 1000
  config.experiment.eval_every = 50
  return config
