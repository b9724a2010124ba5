"""Build script: maps the source folders onto the ``costmesh`` package and compiles ``native/*.pyx``.

``services/`` is the package ``costmesh`` and ``native/`` is ``costmesh.native``. With ``COSTMESH_NO_EXTENSIONS=1`` no
extension is compiled and the pure-Python twins are used, the same switch the runtime reads.
"""

import glob
import os

from setuptools import setup

PACKAGE_DIRS = {"costmesh": "services", "costmesh.native": "native"}


def _packages() -> list[str]:
    found = []
    for package, folder in PACKAGE_DIRS.items():
        for root, _dirs, files in os.walk(folder):
            if "__init__.py" in files and "__pycache__" not in root:
                rel = os.path.relpath(root, folder)
                found.append(package if rel == "." else package + "." + rel.replace(os.sep, "."))
    return found


def _cython_include() -> str:
    """A folder where ``costmesh/native`` points at ``native/``: Cython finds a module's ``.pxd`` (its own and the
    ones it cimports) by the dotted module name, and the source folders do not spell that name."""
    root = os.path.abspath(os.path.join("build", "cython-include"))
    pkg = os.path.join(root, "costmesh")
    os.makedirs(pkg, exist_ok=True)
    marker = os.path.join(pkg, "__init__.pxd")
    if not os.path.exists(marker):
        open(marker, "w").close()
    link = os.path.join(pkg, "native")
    target = os.path.abspath("native")
    if os.path.islink(link) and os.readlink(link) != target:
        os.unlink(link)  # a checkout that moved: point at this one
    if not os.path.lexists(link):
        os.symlink(target, link)
    return root


def _extensions() -> list:
    if os.environ.get("COSTMESH_NO_EXTENSIONS") == "1":
        return []
    sources = sorted(glob.glob("native/*.pyx"))
    if not sources:
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    debug = os.environ.get("COSTMESH_DEBUG") == "1"
    include = _cython_include()
    exts = [
        Extension(
            "costmesh.native." + os.path.splitext(os.path.basename(src))[0],
            [src],
            extra_compile_args=["-O0", "-g"] if debug else ["-O3"],
        )
        for src in sources
    ]
    return cythonize(
        exts,
        include_path=[include],
        language_level=3,
        compiler_directives={"boundscheck": debug, "wraparound": False, "cdivision": True},
        compile_time_env={"COSTMESH_DEBUG": debug},
    )


setup(
    package_dir=PACKAGE_DIRS,
    packages=_packages(),
    package_data={
        "costmesh.native": ["*.pxd", "*.pyi", "*.c", "*.h"],
        "costmesh.sensor.bpf": ["*.c", "*.h"],
        "costmesh.api": ["console/*"],
    },
    ext_modules=_extensions(),
)
