"""Puts the chat page's third-party scripts into the package, from the npm registry, at build time.

The chat page renders the model's markdown with markdown-it, colours code with highlight.js and cleans the
result with DOMPurify. None of them is
kept in this repository: `package.json` pins them, `package-lock.json` pins what they need (with integrity
hashes), and this script runs ``npm ci`` and copies their browser builds, with every bundled package's licence,
into ``src/llama_isolate/server/static/vendor/``. The page then loads them from the server itself: nothing comes
from the network at run time.

    python web/build.py          # once after a checkout (make does it), or after package.json changed
    python web/build.py --check  # exit 1 unless the copies are there and match package-lock.json

Standard library only, so that it runs before the virtual environment exists (and from setup.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

WEB = Path(__file__).resolve().parent
VENDOR = WEB.parent / "src" / "llama_isolate" / "server" / "static" / "vendor"
# The browser builds the page imports (ES modules), by the names the page uses.
SCRIPTS = {
    "markdown-it.js": "markdown-it/dist/browser/markdown-it.esm.min.mjs",
    "purify.js": "dompurify/dist/purify.es.mjs",
    "highlight.js": "@highlightjs/cdn-assets/es/highlight.min.js",  # the core and 36 common languages
}
STAMP = "VERSIONS.json"  # what was copied: the lock file's packages and versions


def locked() -> dict[str, str]:
    """Every package the lock file holds (markdown-it bundles its own dependencies), name -> version."""
    lock = json.loads((WEB / "package-lock.json").read_text())
    packages = lock["packages"]
    return {path.removeprefix("node_modules/"): info["version"] for path, info in packages.items() if path}


def up_to_date() -> bool:
    stamp = VENDOR / STAMP
    if not stamp.exists() or not all((VENDOR / name).exists() for name in SCRIPTS):
        return False
    return bool(json.loads(stamp.read_text()) == locked())


def build() -> None:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            "web/build.py: npm is missing (Debian: apt-get install nodejs npm); the chat page needs it once, "
            "to fetch markdown-it, highlight.js and DOMPurify from the npm registry"
        )
    subprocess.run(  # noqa: S603 - a fixed command
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=WEB, check=True
    )
    modules = WEB / "node_modules"
    if VENDOR.exists():
        shutil.rmtree(VENDOR)
    VENDOR.mkdir(parents=True)
    for name, source in SCRIPTS.items():
        shutil.copyfile(modules / source, VENDOR / name)
    notice = [
        "Third-party code served with the chat page, copied from the npm registry by web/build.py at build time.",
        "",
    ]
    versions = locked()
    for package, version in sorted(versions.items()):
        meta = json.loads((modules / package / "package.json").read_text())
        licences = sorted(p.name for p in (modules / package).iterdir() if p.name.upper().startswith("LICEN"))
        notice.append(f"{package} {version}: {meta.get('license', 'see its licence file')}")
        for licence in licences:
            target = f"{package.replace('/', '__')}.{licence}"
            shutil.copyfile(modules / package / licence, VENDOR / target)
            notice.append(f"  {target}")
    (VENDOR / "NOTICE.txt").write_text("\n".join(notice) + "\n")
    (VENDOR / STAMP).write_text(json.dumps(versions, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say whether the copies are up to date")
    parser.add_argument("--force", action="store_true", help="copy again even when up to date")
    args = parser.parse_args()
    if args.check:
        sys.exit(0 if up_to_date() else 1)
    if args.force or not up_to_date():
        build()


if __name__ == "__main__":
    main()
