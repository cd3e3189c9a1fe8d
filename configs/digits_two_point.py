"""E8 on the bundled digits over five seeds: two-point averages against k.

  python -m sgd_quad.experiments.seeds \
    --config=configs/digits_two_point.py --workdir=/tmp/digits_two_point

The setting of configs/digits_equivalence.py (constant LR 0.2 to step 1000,
then 1000 branch steps); per seed one branch tracks two-point averages at
gaps 10 to 400 with the EMA and SWA, another trains at half the LR. For a
single seed run `python -m sgd_quad.experiments.two_point_gains` with this
config. Expected: about 3 minutes per seed, 15 in all, on a 2-core CPU.
"""

from configs import digits_equivalence


def get_config():
  config = digits_equivalence.get_config()
  config.averaging.two_point_gaps = ()  # experiment.two_point_gaps instead
  config.experiment.name = 'two_point_gains'
  config.experiment.two_point_gaps = (10, 25, 50, 100, 200, 400)
  config.experiment.seeds = (0, 1, 2, 3, 4)
  return config
