"""Every config in configs/ loads, documents its launch and validates."""

import importlib
import pathlib

import pytest

from sgd_quad import config_lib, data, models

CONFIGS = sorted(
  p.stem
  for p in pathlib.Path(__file__).parent.parent.glob('configs/*.py')
  if p.stem != '__init__'
)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_validates(name, monkeypatch):
  module = importlib.import_module(f'configs.{name}')
  assert f'--config=configs/{name}.py' in module.__doc__
  config = module.get_config()
  if config.data.name != 'digits':
    # Catalogue datasets are not on this machine: check everything else.
    monkeypatch.setattr(data, 'validate', lambda *a, **k: None)
  config_lib.validate(config, device_count=8, process_count=1)
  assert config.model.name in models.MODELS


def test_every_documented_config_exists():
  for name in (
    'digits',
    'cifar10',
    'cifar100',
    'imagenet_resnet50',
    'imagenet_ema',
    'imagenet_swa',
    'imagenet_two_point',
    'cifar10_averaging',
    'digits_probes',
    'cifar10_probes',
    'imagenet_probes',
    'digits_equivalence',
  ):
    assert name in CONFIGS
