"""Builds the optional compiled packer (fluentclient/_speedups.pyx); the rest of the
package's settings are in pyproject.toml.

Cython is a build requirement, so the C is generated from the .pyx on every build, into
the build's temporary folder: no generated C is kept in the source tree. If compiling
fails (no C compiler), the install goes on with the pure-Python path, which behaves the
same; ``FLUENTCLIENT_REQUIRE_EXTENSIONS=1`` makes that failure fatal instead (for wheel
builds and CI, where a silent fallback would hide a broken build).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE = "FLUENTCLIENT_REQUIRE_EXTENSIONS"


def _say(text: str) -> None:
    # pip shows a build's output only with -v (or when the build fails): the message is
    # for those logs; at run time `fluentclient --version` says which path runs.
    bar = "*" * 78
    sys.stderr.write(f"\n{bar}\n{text}\n{bar}\n\n")


class OptionalBuildExt(build_ext):
    """build_ext that always compiles afresh, and falls back to pure Python on failure."""

    def finalize_options(self) -> None:
        super().finalize_options()
        # Never reuse an object file or a module compiled by an earlier build: an old
        # build/ folder must not put a stale extension into a wheel.
        self.force = True

    def run(self) -> None:
        try:
            from Cython.Build import cythonize

            # The C, generated afresh into the build's own folder, replaces each .pyx.
            for ext in self.extensions:
                (done,) = cythonize(
                    [ext], build_dir=os.path.join(self.build_temp, "cython"), force=True,
                    quiet=True, compiler_directives={"language_level": 3},
                )
                ext.sources = done.sources
            super().run()
        except Exception as exc:
            self._failed(exc)

    def build_extension(self, ext: Extension) -> None:
        target = self.get_ext_fullpath(ext.name)
        # What an earlier build left where this one writes (the source tree, for an
        # editable install): if this build fails, the old module must not stay behind.
        if os.path.exists(target):
            os.remove(target)
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if os.environ.get(REQUIRE, "") not in ("", "0"):
            raise exc
        _say("fluentclient: the compiled packer could not be built "
             f"({type(exc).__name__}: {exc}).\n"
             "fluentclient is installed without it: it works the same, packing records in "
             "pure Python,\nseveral times slower. Install a C compiler and reinstall to "
             "build it; `fluentclient --version`\nsays which path runs.")


setup(
    ext_modules=[Extension("fluentclient._speedups", ["fluentclient/_speedups.pyx"])],
    cmdclass={"build_ext": OptionalBuildExt},
)
