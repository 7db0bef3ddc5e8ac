"""The one compiled module, the relay's fast path (src/sipbridge/media/_relay.c).

Everything else about the package is in pyproject.toml. The extension is optional: without a C
compiler the install goes on and the pure-Python path (media/relay.py) runs. `make` builds it
in place (`setup.py build_ext --inplace`) for the tests, which run from src/.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sipbridge.media._relay",
            sources=["src/sipbridge/media/_relay.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
