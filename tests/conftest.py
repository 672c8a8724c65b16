"""Test setup: 8 fake CPU devices, forced before jax is imported anywhere.

Every sharding path (data / fsdp / model) is exercised on one CPU this way.
"""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

jax.config.update('jax_threefry_partitionable', True)
