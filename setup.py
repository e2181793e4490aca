"""mio_jax: MIO self-supervised binary contrastive learning in JAX/Flax."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent

setuptools.setup(
    name="mio_jax",
    version="0.1.0",
    description=(
        "Reference JAX/Flax implementation of MIO: mutual information "
        "optimisation with self-supervised binary contrastive learning."
    ),
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["mio_jax", "mio_jax.*"]),
    package_data={"mio_jax": ["data/*.txt", "data/**/*.txt"]},
    python_requires=">=3.10",
    # Loose lower bounds for library users; requirements.txt pins the exact,
    # tested set that `make` installs.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-cpu>=2.21.0; sys_platform != 'darwin'",
        "tensorflow>=2.21.0; sys_platform == 'darwin'",
        "tensorflow-datasets>=4.9.10",
        # Used by tensorflow-datasets 4.9.10 but not declared by it.
        "importlib_resources",
        "pillow",
        "ml-collections>=1.1.0",
        "chex>=0.1.92",
        "absl-py",
        "scikit-learn",
        "scipy",
        "threadpoolctl",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "pytest-xdist"]},
)
