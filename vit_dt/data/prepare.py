"""Getting datasets onto disk (run on a login node: compute nodes often have no internet) and checking them.

CIFAR-10/100: the official tarballs, checked against their published md5, extracted atomically: the download
and extraction happen in a hidden temporary folder under the root and only a tree that loads is moved into
place, so an interrupted or corrupt download never leaves a half-extracted dataset behind.

ImageNet-100: ImageNet's licence does not allow redistribution, so it cannot be downloaded here; we print how
to build it from a user's own ILSVRC-2012 copy, can link its 100 classes into place, and verify the tree.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cifar import CIFAR10_DIR, CIFAR100_DIR, load_cifar10, load_cifar100
from .errors import DatasetError, prepare_hint
from .imagefolder import check_same_classes, scan_split

Log = Callable[[str], None]


@dataclass(frozen=True)
class Archive:
    name: str
    url: str
    md5: str          # published md5 of the tarball
    folder: str       # the directory the tarball extracts to
    file_md5: dict[str, str]  # published md5 of each extracted file


CIFAR_ARCHIVES = {
    "cifar10": Archive(
        name="cifar10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder=CIFAR10_DIR,
        file_md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
    ),
    "cifar100": Archive(
        name="cifar100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder=CIFAR100_DIR,
        file_md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
    ),
}
OFFICIAL_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60

# The 100 ILSVRC-2012 classes of ImageNet-100 (Tian et al., "Contrastive Multiview Coding", 2019:
# https://github.com/HobbitLong/CMC/blob/master/imagenet100.txt).
IMAGENET100_CLASSES = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406", "n02091831", "n04517823", "n04589890",
    "n03062245", "n01773797", "n01735189", "n07831146", "n07753275", "n03085013", "n04485082", "n02105505",
    "n01983481", "n02788148", "n03530642", "n04435653", "n02086910", "n02859443", "n13040303", "n03594734",
    "n02085620", "n02099849", "n01558993", "n04493381", "n02109047", "n04111531", "n02877765", "n04429376",
    "n02009229", "n01978455", "n02106550", "n01820546", "n01692333", "n07714571", "n02974003", "n02114855",
    "n03785016", "n03764736", "n03775546", "n02087046", "n07836838", "n04099969", "n04592741", "n03891251",
    "n02701002", "n03379051", "n02259212", "n07715103", "n03947888", "n04026417", "n02326432", "n03637318",
    "n01980166", "n02113799", "n02086240", "n03903868", "n02483362", "n04127249", "n02089973", "n03017168",
    "n02093428", "n02804414", "n02396427", "n04418357", "n02172182", "n01729322", "n02113978", "n03787032",
    "n02089867", "n02119022", "n03777754", "n04238763", "n02231487", "n03032252", "n02138441", "n02104029",
    "n03837869", "n03494278", "n04136333", "n03794056", "n03492542", "n02018207", "n04067472", "n03930630",
    "n03584829", "n02123045", "n04229816", "n02100583", "n03642806", "n04336792", "n03259280", "n02116738",
    "n02108089", "n03424325", "n01855672", "n02090622",
)


def _md5_of_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(DOWNLOAD_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, log: Log = print) -> None:
    """Stream `url` to `dest`, checking the md5 on the way; on any failure `dest` does not exist."""
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    start, done, next_report = time.monotonic(), 0, 0.1
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            log(f"downloading {url}" + (f" ({total / 1e6:.0f} MB)" if total else ""))
            for chunk in iter(lambda: response.read(DOWNLOAD_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    log(f"  {100 * done / total:.0f}%  {done / 1e6:.0f} MB  {time.monotonic() - start:.0f} s")
                    next_report += 0.1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise DatasetError(
            url, f"download failed ({exc})",
            "check the network (compute nodes often have none: prepare on a login node; behind a proxy set "
            "https_proxy), or fetch the tarball elsewhere and pass --url file:///path/to/tarball",
        ) from exc
    got = digest.hexdigest()
    if got != md5:
        partial.unlink(missing_ok=True)
        raise DatasetError(
            url, f"md5 {got} does not match the published {md5}: the download is corrupt or not the official file",
            "run the command again; if it keeps failing, fetch the official tarball another way and pass "
            "--url file:///path/to/tarball",
        )
    partial.rename(dest)
    log(f"  md5 ok ({got}), {done / 1e6:.0f} MB in {time.monotonic() - start:.0f} s")


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    target = (dest / member.name).resolve()
    if not target.is_relative_to(dest.resolve()) or not (member.isfile() or member.isdir()):
        raise DatasetError(member.name, "unsafe tar member (outside the target folder, a link, or a device)")


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract regular files and folders only, never outside `dest`."""
    try:
        with tarfile.open(tar_path) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python < 3.11.4
                members = tar.getmembers()
                for member in members:
                    _check_member(member, dest)
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(tar_path, f"cannot extract the tarball ({exc})", "run the command again") from exc


def load_cifar(name: str, root: Path) -> tuple[int, int, int]:
    """(train samples, val samples, classes) after fully loading the dataset (raises DatasetError)."""
    if name == "cifar10":
        train, val = load_cifar10(root)
    else:
        train, val = load_cifar100(root, "fine")
        load_cifar100(root, "coarse")
    return len(train), len(val), len(train.classes)


def prepare_cifar(
    name: str, root: str | Path, *, url: str | None = None, md5: str | None = None, force: bool = False,
    log: Log = print,
) -> Path:
    """Download, check and extract CIFAR `name` into <root>/<folder>; returns that folder.

    `url` replaces the official address (a mirror, or file:// to a tarball fetched elsewhere); the md5 check
    stays that of the official tarball unless `md5` is given.
    """
    if name not in CIFAR_ARCHIVES:
        raise ValueError(f"unknown CIFAR dataset {name!r}; valid: {', '.join(CIFAR_ARCHIVES)}")
    archive = CIFAR_ARCHIVES[name]
    root = Path(root)
    target = root / archive.folder
    if target.exists() and not force:
        try:
            n_train, n_val, _ = load_cifar(name, root)
        except DatasetError as exc:
            raise DatasetError(
                target, f"exists but does not load ({exc.problem})", f"{prepare_hint(name, root)} --force"
            ) from exc
        log(f"{name}: already prepared in {target} ({n_train} train, {n_val} test images)")
        return target

    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".vit-dt-prepare-", dir=root))
    try:
        tarball = work / Path(archive.url).name
        download(url or archive.url, tarball, md5 or archive.md5, log=log)
        extracted = work / "extracted"
        extracted.mkdir()
        safe_extract(tarball, extracted)
        if not (extracted / archive.folder).is_dir():
            raise DatasetError(url or archive.url, f"the tarball holds no {archive.folder}/ folder",
                               "pass the official CIFAR python-version tarball")
        n_train, n_val, n_classes = load_cifar(name, extracted)
        if target.exists():  # --force: the old tree goes away only once the new one has loaded
            target.rename(work / "previous")
        os.replace(extracted / archive.folder, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{name}: ready in {target} ({n_train} train, {n_val} test images, {n_classes} classes)")
    return target


@dataclass
class VerifyReport:
    name: str
    path: Path
    train_samples: int
    val_samples: int
    num_classes: int
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = (f"{self.name}: OK  {self.path}  train={self.train_samples}  val={self.val_samples}  "
                f"classes={self.num_classes}")
        return [head, *(f"  note: {n}" for n in self.notes)]


def verify_cifar(name: str, root: str | Path, *, checksums: bool = True) -> VerifyReport:
    """Load the whole dataset (raises DatasetError naming the bad file) and compare with the official files."""
    if name not in CIFAR_ARCHIVES:
        raise ValueError(f"unknown CIFAR dataset {name!r}; valid: {', '.join(CIFAR_ARCHIVES)}")
    archive = CIFAR_ARCHIVES[name]
    root = Path(root)
    n_train, n_val, n_classes = load_cifar(name, root)
    report = VerifyReport(name, root / archive.folder, n_train, n_val, n_classes)
    if (n_train, n_val) != OFFICIAL_SIZES[name]:
        report.notes.append(f"not the official sizes {OFFICIAL_SIZES[name]} (a custom or reduced copy)")
    if checksums:
        differ = [f for f, want in archive.file_md5.items()
                  if (root / archive.folder / f).exists() and _md5_of_file(root / archive.folder / f) != want]
        if differ:
            report.notes.append(f"files differ from the official release: {', '.join(differ)}")
    return report


def imagenet100_instructions(root: str | Path) -> str:
    return f"""ImageNet-100 cannot be downloaded by vit-dt: ImageNet's licence requires every user to register at
https://image-net.org and download ILSVRC-2012 themselves. ImageNet-100 is the 100-class subset of ILSVRC-2012
listed in CMC (Tian et al. 2019, https://github.com/HobbitLong/CMC/blob/master/imagenet100.txt).

  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org.
  2. Extract them as SRC/train/<wnid>/*.JPEG (the train tar holds one tar per class) and
     SRC/val/<wnid>/*.JPEG (sort the flat val images into class folders, e.g. with the common valprep.sh).
  3. vit-dt data prepare imagenet100 --root {root} --from-ilsvrc SRC
     (symlinks the 100 classes into {root}/train and {root}/val; add --copy to copy the files instead)
  4. vit-dt data verify imagenet100 --root {root}
"""


def link_imagenet100(source: str | Path, root: str | Path, *, copy: bool = False,
                     classes: tuple[str, ...] = IMAGENET100_CLASSES, log: Log = print) -> None:
    """Put the ImageNet-100 class folders of an ILSVRC-2012 tree (SRC/{train,val}/<wnid>) under root."""
    source, root = Path(source), Path(root)
    missing = [f"{split}/{wnid}" for split in ("train", "val") for wnid in classes
               if not (source / split / wnid).is_dir()]
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise DatasetError(source, f"not an ILSVRC-2012 class-folder tree: missing {shown}",
                           "see `vit-dt data prepare imagenet100 --root DIR` for how to lay it out")
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for wnid in classes:
            dst, src = root / split / wnid, (source / split / wnid).resolve()
            if dst.exists() or dst.is_symlink():
                continue
            if copy:
                shutil.copytree(src, dst)
            else:
                dst.symlink_to(src, target_is_directory=True)
    log(f"imagenet100: {'copied' if copy else 'linked'} {len(classes)} classes from {source} into {root}")


def verify_imagefolder(root: str | Path, *, num_classes: int = 100, name: str = "imagenet100",
                       check_images: bool = False, log: Log = print) -> VerifyReport:
    """Check the train/val class-folder tree: same classes in both, `num_classes` of them, images in each."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "missing directory (expected train/ and val/ class-folder trees)",
                           f"vit-dt data prepare {name} --root {shlex.quote(str(root))}  (prints how to build it)")
    train_classes, train_samples = scan_split(root / "train", name, root)
    val_classes, val_samples = scan_split(root / "val", name, root)
    check_same_classes(train_classes, val_classes, root / "val", name, root)
    if len(train_classes) != num_classes:
        raise DatasetError(root / "train", f"{len(train_classes)} class folders, expected {num_classes}",
                           f"vit-dt data prepare {name} --root {shlex.quote(str(root))}  (prints how to build it)")
    report = VerifyReport(name, root, len(train_samples), len(val_samples), len(train_classes))
    if name == "imagenet100" and set(train_classes) != set(IMAGENET100_CLASSES):
        report.notes.append("class folders are not the CMC ImageNet-100 list (results will not compare to papers)")
    if check_images:
        from PIL import Image

        for path, _ in [*train_samples, *val_samples]:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as exc:  # PIL raises many types for a bad file
                raise DatasetError(path, f"cannot decode image ({exc})", "replace or delete the file") from exc
        report.notes.append(f"decoded headers of all {len(train_samples) + len(val_samples)} images")
    return report
