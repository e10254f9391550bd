"""`vit-dt data prepare|verify <name> --root DIR`: get a dataset onto disk, check one that is there.

--root means what `dataset.root` means in the config: the folder that holds cifar-10-batches-py/ or
cifar-100-python/, and for imagenet100 the folder that holds train/ and val/. It defaults like the config does:
$VIT_DT_DATA (or ./data), plus /imagenet100 for ImageNet-100.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vit_dt.config.choices import FILE_DATASETS

VERIFIABLE = FILE_DATASETS + ("digits",)   # digits ships inside scikit-learn: nothing to prepare, but a check


def default_root(name: str) -> Path:
    base = Path(os.environ.get("VIT_DT_DATA", "data"))
    return base / "imagenet100" if name == "imagenet100" else base


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit-dt data", description="Prepare and verify datasets.")
    sub = parser.add_subparsers(dest="action", required=True)

    prep = sub.add_parser("prepare", help="download CIFAR-10/100 (md5-checked); explain/link ImageNet-100")
    prep.add_argument("name", choices=FILE_DATASETS)
    prep.add_argument("--root", type=Path, help="dataset.root (default: $VIT_DT_DATA or ./data)")
    prep.add_argument("--url", help="CIFAR: fetch from this URL instead (a mirror, or file:///path/to/tarball); "
                                    "the official md5 is still checked")
    prep.add_argument("--force", action="store_true", help="CIFAR: replace an existing copy")
    prep.add_argument("--from-ilsvrc", type=Path, metavar="SRC",
                      help="imagenet100: an ILSVRC-2012 tree SRC/{train,val}/<wnid>/ to take the 100 classes from")
    prep.add_argument("--copy", action="store_true", help="imagenet100: copy the class folders instead of linking")

    ver = sub.add_parser("verify", help="load a dataset fully and report its sizes")
    ver.add_argument("name", choices=VERIFIABLE)
    ver.add_argument("--root", type=Path, help="dataset.root (default: $VIT_DT_DATA or ./data)")
    ver.add_argument("--num-classes", type=int, default=100, help="imagenet100: class folders expected (100)")
    ver.add_argument("--check-images", action="store_true", help="imagenet100: also decode every image header")
    ver.add_argument("--no-checksums", action="store_true", help="CIFAR: skip comparing with the official md5s")
    return parser


def _prepare(args: argparse.Namespace, root: Path) -> int:
    from vit_dt.data import prepare

    if args.name in prepare.CIFAR_ARCHIVES:
        prepare.prepare_cifar(args.name, root, url=args.url, force=args.force)
        return 0
    if args.from_ilsvrc is not None:
        prepare.link_imagenet100(args.from_ilsvrc, root, copy=args.copy)
        for line in prepare.verify_imagefolder(root).lines():
            print(line)
        return 0
    print(prepare.imagenet100_instructions(root))
    try:
        report = prepare.verify_imagefolder(root)
    except prepare.DatasetError as exc:
        print(f"not prepared yet: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    return 0


def _verify(args: argparse.Namespace, root: Path) -> int:
    from vit_dt.data import prepare

    if args.name == "digits":
        from vit_dt.data.digits import load_digits

        train, val = load_digits()
        print(f"digits: OK  (ships with scikit-learn)  train={len(train)}  val={len(val)}  classes={len(train.classes)}")
        return 0
    if args.name in prepare.CIFAR_ARCHIVES:
        report = prepare.verify_cifar(args.name, root, checksums=not args.no_checksums)
    else:
        report = prepare.verify_imagefolder(root, num_classes=args.num_classes, check_images=args.check_images)
    for line in report.lines():
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse exits on bad usage and on --help
        return int(exc.code or 0)
    root = args.root if args.root is not None else default_root(args.name)

    from vit_dt.data.errors import DatasetError

    try:
        return _prepare(args, root) if args.action == "prepare" else _verify(args, root)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
