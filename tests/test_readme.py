"""The README's walk-through runs, in order, as a newcomer would type it: README.md cannot drift from the code.

Which blocks run (the convention is documented in README.md's "Walk-through" section):

- Every fenced block tagged ``bash``, ``sh``, ``shell``, ``console`` or ``python`` runs, top to bottom, in ONE
  bash session, in a fresh temporary folder (the README's paths are relative to a clone's root; nothing is
  written into the repository), with this tree's ``edgeae`` (the interpreter running the tests) first on PATH.
  In ``console`` blocks the lines starting with ``$ `` are the commands; the other lines are their output,
  shown, not checked. A ``python`` block runs as a script with the same interpreter.
- A block right after a line ``<!-- readme-test: skip REASON -->`` does not run (the reason is required):
  installs, commands that start clusters, placeholders for the reader's own data.
- Untagged or ``text`` blocks (sample output, diagrams) never run.

To keep the run small, each command goes through REWRITES below (e.g. ``make demo`` becomes
``edgeae demo --quick``, training runs one epoch on a few images); a failing command is reported with its
README line. `python tests/test_readme.py` prints the script it would run; `--outputs` runs it with the real
(full-size) demo and prints every command's output, for updating the README's samples; `--full` runs the
README's commands exactly as written (no size rewrites; the photos codec trains for minutes).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_LANGS = {"bash", "sh", "shell", "console", "python"}
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s+(?P<reason>\S.*?)\s*-->")
MARKER = re.compile(r"<!--\s*readme-test:(?P<rest>.*?)-->")
FENCE = re.compile(r"^(?P<indent> {0,3})```(?P<lang>[\w+-]*)\s*$")
PORTS = ("8765", "8766")  # the README's server ports; the test uses free ones instead

# (pattern, replacement) applied to every command, in order; a command rewritten to "" is not run.
# ALWAYS: what the clone's Makefile does, in the venv that runs this test; SMALL: smaller sizes (not with --full).
ALWAYS: list[tuple[str, str]] = [
    (r"^make demo\b.*", "edgeae demo"),
    (r"^make test(-fast)?\b.*", ""),  # this test is part of it
]
REWRITES: list[tuple[str, str]] = [
    (r"^edgeae demo$", "edgeae demo --quick"),
    (r"--epochs \d+", "--epochs 1"),
    (r"^(edgeae train\b(?!.*--dataset photos).*?)(\s+#.*)?$", r"\1 --limit 64\2"),  # photos: a fixed split
    (r"^(edgeae train\b.*)--channels [\d,]+", r"\1--channels 8"),
    (r"^(edgeae train\b.*)--batch-size \d+", r"\1--batch-size 64"),
    (r"^(edgeae profile\b.*)--threads [\d,]+", r"\1--threads 1"),
    (r"^(edgeae profile\b.*)--batch [\d,]+", r"\1--batch 1"),
    (r"^(edgeae eval\b.*--dataset(?!.*--limit).*?)(\s+#.*)?$", r"\1 --limit 64\2"),
    (r"^(edgeae export\b.*?)(\s+#.*)?$", r"\1 --calibration-samples 16 --no-speed\2"),
    (r"^(edgeae profile\b(?!.*--runs)(?!.*--seconds).*?)(\s+#.*)?$", r"\1 --runs 3 --warmup 0\2"),
]


@dataclass
class Block:
    line: int  # README line of the opening fence
    lang: str
    text: str
    skip: str | None  # the reason, when marked skip


@dataclass
class Command:
    line: int
    text: str  # one logical command (continuation lines joined) or a python script
    python: bool = False


def blocks(text: str) -> list[Block]:
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m["lang"].lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.search(prev)
        if MARKER.search(prev) and not skip:
            raise ValueError(f"README.md:{start}: unknown marker {prev.strip()!r}; the only one is "
                             "<!-- readme-test: skip REASON -->")
        out.append(Block(start + 1, lang, "\n".join(lines[start + 1 : j]), skip["reason"] if skip else None))
        i = j + 1
    return out


def commands(block: Block) -> list[Command]:
    if block.lang == "python":
        return [Command(block.line + 1, block.text, python=True)]
    out: list[Command] = []
    pending: list[str] = []
    first = 0
    for k, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        if block.lang == "console" and not pending:
            if not raw.startswith("$ "):
                continue  # output
            raw = raw[2:]
        if not pending:
            first = k
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
        pending.append(raw.rstrip())
        if raw.rstrip().endswith("\\"):
            pending[-1] = pending[-1][:-1].rstrip()
            continue
        out.append(Command(first, " ".join(p.strip() for p in pending)))
        pending = []
    if pending:
        raise ValueError(f"README.md:{first}: the command ends in a line continuation")
    return out


def rewrite(cmd: str, full: bool = False, real_demo: bool = False) -> str:
    rules = ALWAYS + ([] if full else [r for r in REWRITES if not (real_demo and r[0] == r"^edgeae demo$")])
    for pattern, repl in rules:
        cmd = re.sub(pattern, repl, cmd)
    return cmd.strip()


def script(text: str, ports: dict[str, str], full: bool = False, real_demo: bool = False) -> str:
    parts = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for block in blocks(text):
        if block.skip or block.lang not in RUN_LANGS:
            continue
        for c in commands(block):
            body = c.text
            for readme_port, port in ports.items():
                body = body.replace(readme_port, port)
            if c.python:
                parts.append(f"echo '::README.md:{c.line}: python' >&2")
                parts.append(f"python - <<'README_PYTHON'\n{body}\nREADME_PYTHON")
                continue
            body = rewrite(body, full, real_demo)
            if not body:
                continue
            parts.append(f"echo {shlex.quote(f'::README.md:{c.line}: {body}')} >&2")
            parts.append(body)
    return "\n".join(parts) + "\n"


def free_ports() -> dict[str, str]:
    """README port -> a port free now (all bound at once, so they differ)."""
    socks = [socket.socket() for _ in PORTS]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return {p: str(s.getsockname()[1]) for p, s in zip(PORTS, socks, strict=True)}
    finally:
        for s in socks:
            s.close()


def run_readme(cwd: Path, full: bool = False, timeout: float = 900, real_demo: bool = False
               ) -> subprocess.CompletedProcess:
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    merged = full or real_demo  # for reading: outputs after the command lines that made them
    return subprocess.run(["bash", "-c", script(README.read_text(), free_ports(), full, real_demo)], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                          text=True, timeout=timeout)


def test_every_shell_block_is_run_or_says_why_not():
    found = blocks(README.read_text())
    shells = [b for b in found if b.lang in RUN_LANGS]
    assert shells, "no runnable blocks found in README.md"
    for b in shells:
        assert b.skip is None or len(b.skip) > 8, f"README.md:{b.line}: give a reason to skip"
        cmds = commands(b)
        assert cmds or b.skip, f"README.md:{b.line}: a {b.lang} block without commands"
    assert any(rewrite(c.text).startswith("edgeae demo") for b in shells if not b.skip for c in commands(b)), \
        "the walk-through must start from `make demo`"


def test_the_parser_and_the_rewrites():
    text = "x\n<!-- readme-test: skip needs a GPU cluster -->\n```bash\nmake gpu\n```\n```console\n$ edgeae train " \
           "--epochs 30 \\\n    --out runs/x   # a comment\nrun: runs/x\n$ curl -s localhost:8765/healthz\n{}\n```\n"
    b = blocks(text)
    assert [(x.lang, x.skip) for x in b] == [("bash", "needs a GPU cluster"), ("console", None)]
    cmds = commands(b[1])
    assert [c.text for c in cmds] == ["edgeae train --epochs 30 --out runs/x   # a comment",
                                      "curl -s localhost:8765/healthz"]
    assert [c.line for c in cmds] == [7, 10]
    assert rewrite(cmds[0].text) == "edgeae train --epochs 1 --out runs/x --limit 64   # a comment"
    assert rewrite("make test") == "" and rewrite("make demo") == "edgeae demo --quick"
    assert rewrite("edgeae profile B --runs 5") == "edgeae profile B --runs 5"
    assert "localhost:9999" in script(text, {"8765": "9999"})
    with pytest.raises(ValueError, match="unknown marker"):
        blocks("<!-- readme-test: run -->\n```bash\nls\n```\n")


@pytest.mark.slow
def test_the_readme_walk_through_runs(tmp_path):
    res = run_readme(tmp_path)
    if res.returncode != 0:
        where = [line for line in res.stderr.splitlines() if line.startswith("::README.md:")]
        pytest.fail(f"README command failed (exit {res.returncode}) at {where[-1] if where else '?'}\n"
                    f"--- stdout (tail)\n{res.stdout[-3000:]}\n--- stderr (tail)\n{res.stderr[-3000:]}")
    # The demo's profile stage (quick_profile) compares fp32, int8, PyTorch eager and JPEG, as README shows.
    for label in ("onnxruntime fp32", "onnxruntime int8", "edgeae fp32", "torch eager", "jpeg q75", "speed vs fp32"):
        assert label in res.stdout, label
    loose = sorted(p.name for p in tmp_path.iterdir() if not p.is_dir())
    assert not loose, f"README commands wrote files into the clone's root: {loose}; write into a folder"


if __name__ == "__main__":  # print the script, or run the README and show real outputs
    if "--full" in sys.argv or "--outputs" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_readme(Path(tmp), full="--full" in sys.argv, timeout=3600, real_demo=True)
            print(r.stdout)
            sys.exit(r.returncode)
    print(script(README.read_text(), {p: p for p in PORTS}))
