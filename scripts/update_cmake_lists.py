#!/usr/bin/env python3
"""Regenerate the file lists in the module CMakeLists.txt files (NeXtQSM/, NeXtQSMTraining/).

Every Python file of a module folder goes into the ``MODULE_PYTHON_SCRIPTS`` block and
every other shipped file (icons, .ui, weights, configs, tables) into ``MODULE_PYTHON_RESOURCES``,
between the ``# BEGIN GENERATED ...`` / ``# END GENERATED ...`` markers.

    python scripts/update_cmake_lists.py          # rewrite the blocks
    python scripts/update_cmake_lists.py --check  # exit 1 (and list the differences) when out of date

``Testing/test_widget_static.py`` runs the check, so a file added without updating the list fails CI.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = {"NeXtQSM": "nextqsm", "NeXtQSMTraining": "nextqsm_training"}
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", "Testing"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".tmp", ".orig", ".rej", ".swp"}
SKIP_NAMES = {"CMakeLists.txt", ".DS_Store"}
BLOCKS = ("SCRIPTS", "RESOURCES")


def _candidate_files(module_dir: Path) -> list[Path]:
    """Files of the folder that git would ship (tracked or untracked, not ignored); all files without git."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "."],
                             cwd=module_dir, capture_output=True, check=True).stdout.decode()
        files = [module_dir / f for f in out.split("\0") if f]
        return sorted(p for p in files if p.exists())
    except (OSError, subprocess.CalledProcessError):
        return sorted(module_dir.rglob("*"))


def module_files(module_dir: Path) -> tuple[list[str], list[str]]:
    """(scripts, resources) of a module folder, POSIX paths relative to it, sorted."""
    scripts, resources = [], []
    for p in _candidate_files(module_dir):
        rel = p.relative_to(module_dir)
        if not p.is_file() or any(part in SKIP_DIRS or part.startswith(".") or part.endswith(".egg-info")
                                  for part in rel.parts):
            continue
        if p.name in SKIP_NAMES or p.suffix in SKIP_SUFFIXES:
            continue
        (scripts if p.suffix == ".py" else resources).append(rel.as_posix())
    main = f"{module_dir.name}.py"
    scripts.sort(key=lambda s: (s != main, s))
    return scripts, resources


def render_block(kind: str, files: list[str], module: str) -> str:
    lines = [f"  # BEGIN GENERATED {kind} (scripts/update_cmake_lists.py)"]
    for f in files:
        lines.append("  " + f.replace(module, "${MODULE_NAME}", 1) if f.startswith(module + ".")
                     or f.startswith(f"Resources/Icons/{module}.") or f.startswith(f"Resources/UI/{module}.")
                     else "  " + f)
    lines.append(f"  # END GENERATED {kind}")
    return "\n".join(lines)


def listed_files(cmake_text: str, kind: str, module: str) -> list[str]:
    """Files inside a generated block, with ${MODULE_NAME} expanded."""
    m = re.search(rf"# BEGIN GENERATED {kind}.*?\n(.*?)\n\s*# END GENERATED {kind}", cmake_text, re.S)
    if not m:
        return []
    out = []
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line.replace("${MODULE_NAME}", module))
    return out


def updated_text(cmake_text: str, module_dir: Path) -> str:
    module = module_dir.name
    scripts, resources = module_files(module_dir)
    text = cmake_text
    for kind, files in (("SCRIPTS", scripts), ("RESOURCES", resources)):
        pat = re.compile(rf"  # BEGIN GENERATED {kind}.*?# END GENERATED {kind}", re.S)
        if not pat.search(text):
            raise SystemExit(f"{module_dir / 'CMakeLists.txt'}: no '# BEGIN GENERATED {kind}' block")
        text = pat.sub(lambda _m: render_block(kind, files, module), text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report; exit 1 when a list is out of date")
    args = ap.parse_args(argv)
    bad = 0
    for module in MODULES:
        d = REPO / module
        cm = d / "CMakeLists.txt"
        old = cm.read_text()
        new = updated_text(old, d)
        if old == new:
            print(f"{cm.relative_to(REPO)}: up to date")
            continue
        if args.check:
            bad += 1
            for kind in BLOCKS:
                a, b = set(listed_files(old, kind, module)), set(listed_files(new, kind, module))
                for f in sorted(b - a):
                    print(f"{cm.relative_to(REPO)}: {kind} is missing {f}")
                for f in sorted(a - b):
                    print(f"{cm.relative_to(REPO)}: {kind} lists {f}, which does not exist")
            print(f"run: python {Path(__file__).relative_to(REPO)}")
        else:
            cm.write_text(new)
            print(f"{cm.relative_to(REPO)}: updated")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
