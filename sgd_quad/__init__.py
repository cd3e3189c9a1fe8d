"""sgd_quad: mini-batch loss landscapes and iterate averaging for SGD in JAX.

The package trains ResNets with pure, jit-compiled steps, follows the loss of
fixed mini-batches along the trajectory, fits quadratics along the gradient,
and relates iterate averaging (EMA, SWA, two-point averages) to learning-rate
schedules through the noisy-quadratic model in `sgd_quad.theory`.
"""

__version__ = '0.1.0'
