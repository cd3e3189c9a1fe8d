"""E9 on the bundled digits over five seeds: averaging gain vs the schedule.

  python -m sgd_quad.experiments.seeds \
    --config=configs/digits_schedule_gain.py --workdir=/tmp/digits_schedule

From the constant-LR base run of configs/digits_equivalence.py at step 1000,
one branch keeps LR 0.2 and one decays it to 0 along a cosine over 1000
steps, both tracking the EMA, SWA and two-point average. For one seed run
`python -m sgd_quad.experiments.schedule_gain` with this config. Expected:
about 2 minutes per seed on a 2-core CPU.
"""

from configs import digits_equivalence


def get_config():
  config = digits_equivalence.get_config()
  config.experiment.name = 'schedule_gain'
  config.experiment.decay = 'cosine'
  return config
