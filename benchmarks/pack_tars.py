"""Carry JPEG tars to a device machine in fewer bytes: one xz-compressed pickle of their members.

A device call carries at most 64 MiB; CIFAR-10's two tars are 74 MiB, but their 60k small JPEGs
share headers and quantisation tables, so xz packs them into ~18 MB. ``unpack`` writes tars with the
same member names and bytes (ImageFolder layouts and the dataset code read them unchanged):

    python benchmarks/pack_tars.py pack ../shared/data/cifar10 gpu_data/cifar10.pkl.xz      # here
    python3 benchmarks/pack_tars.py unpack gpu_data/cifar10.pkl.xz gpu_data/cifar10         # there (~3 s)

Only regular-file members are kept (directories are implied by the names), in their original order.
"""
from __future__ import annotations

import argparse
import io
import lzma
import pickle
import tarfile
from pathlib import Path

SPLITS = ("train", "test")


def pack(src: Path, dst: Path, splits=SPLITS) -> Path:
    members = {}
    for split in splits:
        with tarfile.open(src / f"{split}.tar") as tar:
            members[split] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with lzma.open(dst, "wb", preset=6) as f:
        pickle.dump(members, f, protocol=5)
    return dst


def unpack(src: Path, dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    with lzma.open(src, "rb") as f:
        members = pickle.load(f)  # our own file: pickle is fine here, never load one from elsewhere
    written = []
    for split, files in members.items():
        written.append(dst / f"{split}.tar")
        with tarfile.open(written[-1], "w") as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("pack", "unpack"))
    p.add_argument("src", type=Path, help="pack: folder with <split>.tar; unpack: the .pkl.xz file")
    p.add_argument("dst", type=Path, help="pack: the .pkl.xz file to write; unpack: folder for the tars")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), help="pack: which <split>.tar files")
    args = p.parse_args(argv)
    if args.action == "pack":
        missing = [s for s in args.splits if not (args.src / f"{s}.tar").is_file()]
        if missing:
            p.error(f"src={args.src}: no {', '.join(s + '.tar' for s in missing)} there")
        out = pack(args.src, args.dst, args.splits)
        print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    else:
        if not args.src.is_file():
            p.error(f"src={args.src} is not a file (expected a .pkl.xz written by 'pack')")
        for path in unpack(args.src, args.dst):
            print(path)


if __name__ == "__main__":
    main()
