"""Only a workaround: everything else is in pyproject.toml.

setuptools' editable wheels (``pip install -e``, which deploy/install.sh uses) skip ``data-files``: its
``editable_wheel`` installs data only if the distribution has a ``has_data()`` method, and distributions have
``has_data_files()`` (setuptools 64 to at least 84). Without this, the ``jupyter_server_config.d`` file that
enables the server extension is installed by ``pip install`` but not by ``pip install -e``.
"""

from setuptools import setup
from setuptools.dist import Distribution


class _Distribution(Distribution):
    def has_data(self) -> bool:
        return self.has_data_files()


setup(distclass=_Distribution)
