"""Builds the optional compiled packer (fluentclient/_speedups.pyx); the rest of the
package's settings are in pyproject.toml.

Cython is a build requirement, so the C is generated from the .pyx on every build, into
the build's temporary folder: no generated C is kept in the source tree. If compiling
fails (no C compiler), the install goes on with the pure-Python path, which behaves the
same; ``FLUENTCLIENT_REQUIRE_EXTENSIONS=1`` makes that failure fatal instead (for wheel
builds and CI, where a silent fallback would hide a broken build). A wheel built where
compiling failed holds no compiled code, so it is tagged as such: ``py3-none-any``.

The module is compiled without debug information (it would make it several times larger);
``FLUENTCLIENT_DEBUG_BUILD=1`` keeps it, to debug the C.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError, LinkError

REQUIRE = "FLUENTCLIENT_REQUIRE_EXTENSIONS"
DEBUG = "FLUENTCLIENT_DEBUG_BUILD"
# Left beside where the module would be when it could not be built: pip shows a build's
# output only with -v, so the package itself says so when imported (see _accel.py).
FAILED_NOTE = "_speedups.build-failed"


def _say(text: str) -> None:
    # pip shows a build's output only with -v (or when the build fails): the message is
    # for those logs; at run time `fluentclient --version` says which path runs.
    bar = "*" * 78
    sys.stderr.write(f"\n{bar}\n{text}\n{bar}\n\n")


class OptionalBuildExt(build_ext):
    """build_ext that always compiles afresh, and falls back to pure Python on failure."""

    # Set when an extension could not be built: the wheel is then a pure-Python one.
    failed = False

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
            for ext in self.extensions:
                self._failed(exc, ext)

    def build_extension(self, ext: Extension) -> None:
        target = self.get_ext_fullpath(ext.name)
        # What an earlier build left where this one writes (the source tree, for an
        # editable install): if this build fails, the old module must not stay behind.
        note = self._note(ext)
        for stale in (target, note):
            if os.path.exists(stale):
                os.remove(stale)
        if self.compiler.compiler_type != "msvc" and os.environ.get(DEBUG, "") in ("", "0"):
            # After Python's own flags (which ask for -g), so this one wins.
            ext.extra_compile_args = [*ext.extra_compile_args, "-g0"]
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed(exc, ext)

    def _note(self, ext: Extension) -> str:
        return os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), FAILED_NOTE)

    def _failed(self, exc: Exception, ext: Extension) -> None:
        if os.environ.get(REQUIRE, "") not in ("", "0"):
            raise exc
        OptionalBuildExt.failed = True
        if isinstance(exc, (CompileError, LinkError)):
            # Its text is the whole command line; the compiler's own output is in the log.
            why = f"the C compiler failed: {type(exc).__name__}"
        else:
            why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        note = self._note(ext)
        os.makedirs(os.path.dirname(note), exist_ok=True)
        with open(note, "w", encoding="utf-8") as f:
            f.write(why + "\n")
        _say(f"fluentclient: the compiled packer could not be built ({why}).\n"
             "fluentclient is installed without it: it works the same, packing records in "
             "pure Python,\nseveral times slower. Install a C compiler and reinstall to "
             "build it; `fluentclient --version`\nsays which path runs.")


class WheelOfWhatWasBuilt(bdist_wheel):
    """A wheel tagged for the platform only if it holds the compiled module."""

    def run_command(self, command: str) -> None:
        super().run_command(command)
        # After the build, before the wheel's files are laid out and named.
        if command == "build" and OptionalBuildExt.failed:
            self.root_is_pure = True
            # So that the install into the wheel lays it out as pure Python too.
            self.distribution.has_ext_modules = lambda: False  # type: ignore[method-assign]


setup(
    ext_modules=[Extension("fluentclient._speedups", ["fluentclient/_speedups.pyx"])],
    cmdclass={"build_ext": OptionalBuildExt, "bdist_wheel": WheelOfWhatWasBuilt},
)
