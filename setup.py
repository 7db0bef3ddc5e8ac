"""The compiled relay engine (src/sipbridge/_crelay.c, driven by server/media/crelay.py).

Everything else is in pyproject.toml. The extension is optional: when it cannot be built (no
compiler, no Python headers) the install goes on and the relay uses the pure-Python path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sipbridge._crelay",
            ["src/sipbridge/_crelay.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            libraries=["m"],
            optional=True,
        )
    ]
)
