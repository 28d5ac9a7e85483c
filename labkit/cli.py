"""The ``labkit`` command: the lab for terminal users and scripts.

Exit status 0 on success; on failure one line that names the problem and the fix,
and status 1. Commands grow with the lessons (see README.md for the full list).
"""
from __future__ import annotations

import argparse
import sys

from . import lab
from .errors import LabError


def cmd_preflight(args) -> int:
    report = lab.preflight()
    print(report)
    if not report.ok:
        print(f"\n{len(report.missing())} required item(s) missing: run scripts/provision.sh as root, "
              "or fix what the arrows say.", file=sys.stderr)
        return 1
    print("\nThe lab has everything it needs.")
    return 0


def cmd_reset(args) -> int:
    done = lab.reset(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for line in done:
        print(f"{verb} {line}")
    print(f"{len(done)} item(s) {verb}; the lab root {lab.root()} is clean." if not args.dry_run
          else f"{len(done)} item(s) to remove; run without --dry-run to remove them.")
    return 0


def cmd_progress(args) -> int:
    from . import exercises
    print(exercises.progress())
    return 0


def cmd_notebook(args) -> int:
    from . import exercises
    if args.action == "sync":
        added = exercises.sync_notebooks()
        print(f"copied {len(added)} new notebook(s) to {exercises.work_dir()}: {' '.join(added) or '-'}")
    else:
        dst = exercises.reset_notebook(args.name)
        print(f"restored the original {dst.name} in {dst.parent} (your version is in .backup/)")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="Container images from the kernel up.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("preflight", help="check kernel features, privileges and tools").set_defaults(fn=cmd_preflight)
    r = sub.add_parser("reset", help="unmount and remove everything the lab made")
    r.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    r.set_defaults(fn=cmd_reset)
    sub.add_parser("progress", help="your exercises and their state").set_defaults(fn=cmd_progress)
    nb = sub.add_parser("notebook", help="your copies of the lesson notebooks")
    nb.add_argument("action", choices=["sync", "reset"],
                    help="sync: copy new lessons to your work dir; reset NAME: restore the original")
    nb.add_argument("name", nargs="?", help="with reset: the lesson, e.g. 01-overlayfs")
    nb.set_defaults(fn=cmd_notebook)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "action", None) == "reset" and not args.name:
        parser().error("notebook reset needs the lesson name, e.g. labkit notebook reset 01-overlayfs")
    try:
        return args.fn(args)
    except LabError as e:
        print(f"labkit: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
