"""The package's one build step beyond pyproject.toml: the chat page's third-party scripts (see web/build.py).

A wheel built from a checkout (or from the sdist, which carries web/) gets markdown-it and DOMPurify from the npm
registry here, at build time, so that the installed server serves them itself. Without npm the build still
succeeds, with a warning: the page then shows answers as plain text.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEB_BUILD = Path(__file__).resolve().parent / "web" / "build.py"


class BuildWithPageScripts(build_py):
    def run(self) -> None:
        if WEB_BUILD.exists():
            try:
                subprocess.run([sys.executable, str(WEB_BUILD)], check=True)  # noqa: S603 - our own script
            except (OSError, subprocess.CalledProcessError, SystemExit) as exc:
                logging.getLogger(__name__).warning(
                    "the chat page's markdown renderer was not fetched (%s): answers will show as plain text", exc
                )
        super().run()


setup(cmdclass={"build_py": BuildWithPageScripts})
