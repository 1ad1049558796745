"""Training runs as at most 8 files: how runs trained on the lent GPU machine come back.

The device tool returns at most 8 files from $OUT, 16 MiB each, 64 MiB in all, none deeper than two folders,
and a run directory is deeper than that (RUN/checkpoint/model.safetensors) and its weights can be bigger than one
file may be (a Balle-sized hyperprior: 24 MB). `pack` writes `runs.json` (every JSON file of every run, and
where each tensor went) and up to 7 shards `runs-N.safetensors`; `unpack` rebuilds the run directories exactly
(config, metrics, checkpoint: resumable, exportable). Adam's moments are left out (as
`trainer.slim_checkpoint` does, through the same `slim_tensors` / `slim_meta`: a resume re-estimates them); identical weight files (a finished run's
weights.safetensors and its last checkpoint's model) are stored once; `--half` stores float32 tensors as
float16 (restored to float32; refused for a tensor float16 cannot hold). What does not fit is refused before
anything is written, with the sizes.

On the device, after training into a local folder (benchmarks/gpu_pairs.sh's header has the whole command):

    python3 benchmarks/runpack.py pack $OUT/pack /tmp/pairs/c_0.013 /tmp/pairs/h_0.013
    # here, after the call (files_at is where the tool put $OUT):
    python benchmarks/runpack.py unpack FILES_AT/pack runs/gpu
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

MAX_FILES, MAX_FILE, MAX_TOTAL = 8, 16 * 2**20 - 2**16, 64 * 2**20 - 2**17  # the device tool's, less a margin
INDEX = "runs.json"


class PackError(SystemExit):
    pass


def _files(run: Path, pattern: str) -> list[Path]:
    """The run's files, without a crashed checkpoint's aside copy (.checkpoint.old-*)."""
    return sorted(p for p in run.rglob(pattern) if not any(s.startswith(".") for s in p.relative_to(run).parts))


def pack(out: Path, runs: list[Path], half: bool = False) -> dict:
    from safetensors.numpy import load_file, save_file

    from edgeae.train.rundir import CKPT_STATE, CKPT_TENSORS, read_json
    from edgeae.train.trainer import slim_meta, slim_tensors

    index: dict = {"version": 1, "runs": {}, "blobs": {}, "half": half}
    blobs: dict[str, dict[str, np.ndarray]] = {}
    for run in runs:
        if not (run / "config.json").is_file():
            raise PackError(f"runpack: {run} is not a run directory (no config.json)")
        entry: dict = {"json": {}, "tensors": {}}
        for p in _files(run, "*.json"):
            data = read_json(p)
            entry["json"][str(p.relative_to(run))] = slim_meta(data) if p.name == CKPT_STATE else data
        for p in _files(run, "*.safetensors"):
            tensors = load_file(str(p))
            tensors = slim_tensors(tensors) if p.name == CKPT_TENSORS else tensors
            digest = hashlib.sha256()
            for k in sorted(tensors):
                digest.update(k.encode() + b"\0" + str(tensors[k].dtype).encode() + tensors[k].tobytes())
            key = digest.hexdigest()[:16]
            blobs.setdefault(key, tensors)
            entry["tensors"][str(p.relative_to(run))] = key
        index["runs"][run.name] = entry
    shards: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    for key, tensors in blobs.items():
        for name, t in tensors.items():
            stored = t
            if half and t.dtype == np.float32:
                stored = t.astype(np.float16)
                if not np.array_equal(np.isfinite(stored), np.isfinite(t)):
                    raise PackError(f"runpack: {key}/{name} does not fit float16; pack without --half")
            if sizes[-1] + stored.nbytes > MAX_FILE and shards[-1]:
                shards.append({})
                sizes.append(0)
            shards[-1][f"{key}/{name}"] = stored
            sizes[-1] += stored.nbytes
            index["blobs"].setdefault(key, {})[name] = [len(shards) - 1, str(t.dtype)]
    total = sum(sizes)
    if len(shards) + 1 > MAX_FILES or total > MAX_TOTAL or max(sizes) > MAX_FILE:
        raise PackError(f"runpack: {len(runs)} runs need {len(shards)} shards, {total / 2**20:.1f} MiB in all; the "
                        f"device tool returns {MAX_FILES - 1} shards and {MAX_TOTAL / 2**20:.0f} MiB: pack fewer runs"
                        + ("" if half else " or add --half"))
    out.mkdir(parents=True, exist_ok=True)
    for i, shard in enumerate(shards):
        save_file(shard, str(out / f"runs-{i}.safetensors"))
    (out / INDEX).write_text(json.dumps(index, indent=1))  # last: a pack is complete once it has its index
    return {"runs": len(runs), "shards": len(shards), "mib": total / 2**20}


def unpack(src: Path, dest: Path) -> list[Path]:
    from safetensors.numpy import load_file, save_file

    if not (src / INDEX).is_file():
        raise PackError(f"runpack: {src} holds no {INDEX}: not a pack, or an unfinished one")
    from edgeae.train.rundir import read_json

    index = read_json(src / INDEX)
    shards = {int(p.stem.split("-")[1]): load_file(str(p)) for p in src.glob("runs-*.safetensors")}
    clash = [str(dest / name) for name in index["runs"] if (dest / name).exists()]
    if clash:  # checked before anything is written
        raise PackError(f"runpack: {', '.join(clash)} exists; unpack somewhere else or remove it")
    made = []
    for name, entry in index["runs"].items():
        run = dest / name
        for rel, blob in entry["tensors"].items():
            tensors = {t: shards[i][f"{blob}/{t}"].astype(dtype) for t, (i, dtype) in index["blobs"][blob].items()}
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(run / rel))
        for rel, data in entry["json"].items():
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            (run / rel).write_text(json.dumps(data, indent=2))
        made.append(run)
    return made


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack run directories into OUT")
    p.add_argument("out", type=Path)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--half", action="store_true", help="store float32 tensors as float16")
    u = sub.add_parser("unpack", help="rebuild the run directories of a pack under DEST")
    u.add_argument("src", type=Path)
    u.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        r = pack(a.out, a.runs, a.half)
        print(f"packed {r['runs']} runs into {r['shards']} shards + {INDEX}, {r['mib']:.1f} MiB, in {a.out}")
    else:
        for run in unpack(a.src, a.dest):
            print(f"unpacked {run}")


if __name__ == "__main__":
    sys.exit(main())
