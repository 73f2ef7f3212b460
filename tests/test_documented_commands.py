"""Every `pbrl-*` command shown in the docs parses as written, and the cheap ones run.

The commands are read from the README, docs/, launch/, benchmarks/, experiments/, the configs'
docstrings and the entry points' own usage lines. Each is parsed by its entry point's real
flags in a subprocess (an unknown flag, a wrong type, a missing required flag, a config file
that does not load or a `--config.key=value` override of a key that does not exist fails
here). Placeholders (C, DIR, METHOD, configs/X.py, ...) are filled with configs/tiny.py,
temporary paths and real method names first. `pbrl-plan` commands then run to the end as
shown (they are analytic); the expensive commands run as shown in their own tests:
`pbrl-compare --quick` in tests/compare, `pbrl-train` on configs/tiny.py in tests/train and
tests/faults, `pbrl-eval` in tests/evaluate, `pbrl-score` in tests/rewards, `pbrl-pivot` in
tests/data.
"""

import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("train", "pivot", "eval", "score", "plan", "compare")
DOC_GLOBS = ("README.md", "docs/*.md", "launch/README.md", "benchmarks/*.md",
             "experiments/*/README.md", "configs/*.py", "pbrl_jax/cli/*_main.py",
             "pbrl_jax/compare/__init__.py", "pbrl_jax/train.py", "notebooks/*.ipynb")
_OPTIONAL_RE = re.compile(r"\[([^\[\]]*)\]")
# Placeholders -> values the flags accept (the paths need not exist to parse).
_CONFIG_PLACEHOLDERS = {"C": "configs/tiny.py", "C[:variant]": "configs/tiny.py",
                        "CONFIG": "configs/tiny.py", "configs/X.py": "configs/tiny.py",
                        "configs/miniature.py:METHOD": "configs/miniature.py:pbrl_hybrid"}


def _documented_lines() -> list[tuple[str, str]]:
  """(where, text) of every line in the docs, `\\` continuations joined."""
  out = []
  for pattern in DOC_GLOBS:
    for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
      with open(path, encoding="utf-8") as f:
        text = f.read()
      if path.endswith(".ipynb"):
        cells = json.loads(text)["cells"]
        text = "\n".join("".join(c["source"]) for c in cells)
      text = re.sub(r"\\\\?\n\s*", " ", text)  # `\` (or `\\` in a docstring) continues a line
      rel = os.path.relpath(path, ROOT)
      out += [(f"{rel}:{i + 1}", line) for i, line in enumerate(text.splitlines())]
  return out


def _variants(args: str) -> list[str]:
  """`A [B \\| C] [D ...]` -> ['A', 'A B', 'A C', 'A D']: each optional part on its own."""
  base = _OPTIONAL_RE.sub(" ", args)
  out = [base]
  for group in _OPTIONAL_RE.findall(args):
    for alternative in re.split(r"\\?\|", group):
      alternative = alternative.replace("...", " ").strip()
      if alternative.startswith("-"):  # not `C[:variant]`, a part of a value
        out.append(f"{base} {alternative}")
  return out


def _concrete(args: list[str], tmp: str) -> list[str] | None:
  """Placeholders filled in; None for a sketch that names no real command (`--config ...`)."""
  out = []
  for i, arg in enumerate(args):
    if arg in ("...", "ARGS") or arg.startswith("--config.a."):
      return None
    prev = args[i - 1] if i else ""
    if prev == "--config" and arg in _CONFIG_PLACEHOLDERS:
      arg = _CONFIG_PLACEHOLDERS[arg]
    elif prev == "--config" and not os.path.isfile(os.path.join(ROOT, arg.split(":")[0])):
      return None  # `--config ...` in prose
    elif arg.startswith("--config="):
      arg = "--config=" + _CONFIG_PLACEHOLDERS.get(arg[9:], arg[9:])
    elif re.fullmatch(r"[A-Z_]+|<[^>]*>|/path/to/\S+", arg):
      arg = os.path.join(tmp, "placeholder")
    out.append(arg)
  return out


def _launched(line: str) -> str:
  """`launch/tpu_pod.sh ... --config C --workdir W [--command T] [-- ARGS]` -> the command
  every worker runs: `T --config C --workdir W' ARGS` (with --gcsfuse a gs:// W becomes its
  mount path)."""
  own, _, extra = line.partition(" -- ")
  argv = shlex.split(own.split(" #")[0])
  opts = {a: argv[i + 1] for i, a in enumerate(argv[:-1])
          if a in ("--config", "--workdir", "--command")}  # the rest are the launcher's own
  workdir = opts.get("--workdir", "")
  if "--gcsfuse" in argv:
    workdir = re.sub(r"^gs://", "/gcs/", workdir)
  return " ".join([opts.get("--command", "pbrl-train"), "--config", opts.get("--config", "..."),
                   "--workdir", workdir, extra.split(" #")[0]]).strip()


def _shown(line: str) -> str | None:
  """The command a line shows: a code line starting with it, or a table's first cell."""
  text = line.strip()
  if text.startswith("| `pbrl-"):
    return text[3:].split("` |")[0]
  if text.startswith("launch/tpu_pod.sh"):
    text = _launched(text)  # the command the launcher runs on every worker
  if text.startswith("pbrl-"):
    return text.split(" #")[0]
  return None  # prose that names a command or a flag in passing is not a command


def _is_argv(argv: list[str]) -> bool:
  """Flags and their values only (no entry point here takes positional arguments)."""
  return all(a.startswith("-") or (i and argv[i - 1].startswith("--") and "=" not in argv[i - 1])
             for i, a in enumerate(argv))


def documented_commands(tmp: str) -> dict[str, list[tuple[str, list[str]]]]:
  """tool -> [(where, argv)] of every documented command."""
  found = {t: [] for t in TOOLS}
  for where, line in _documented_lines():
    shown = _shown(line)
    if shown is None:
      continue
    tool, _, rest = shown.partition(" ")
    tool = tool.removeprefix("pbrl-")
    if tool not in found:
      continue
    for variant in _variants(rest):
      argv = shlex.split(variant)
      assert _is_argv(argv), f"{where}: cannot read {shown!r} as a command"
      argv = _concrete(argv, tmp)
      if argv is not None:
        found[tool].append((where, argv))
  return found


_PARSER = r"""
import json, sys
from absl import flags
import importlib
module = importlib.import_module(f"pbrl_jax.cli.{sys.argv[1]}_main")  # noqa
module.define_flags()
errors = []
tool = sys.argv[1]
for where, argv in json.loads(sys.stdin.read()):
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)  # the previous command's override flags
  # ml_collections reads `--config.x=v` overrides from sys.argv, as a real launch has it.
  sys.argv = [f"pbrl-{tool}", *argv]
  try:
    flags.FLAGS(sys.argv)
    flags.FLAGS.validate_all_flags()
  except Exception as e:  # every failure is reported with where the command is written
    errors.append(f"{where}: pbrl-{tool} {' '.join(argv)}: {type(e).__name__}: {e}")
print(json.dumps(errors))
"""


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
  return documented_commands(str(tmp_path_factory.mktemp("documented")))


def test_the_docs_show_every_command(commands):
  # The extraction itself: each entry point is documented (an extraction that finds nothing
  # would let every other test here pass).
  counts = {t: len(v) for t, v in commands.items()}
  assert all(n >= 2 for n in counts.values()), counts


@pytest.mark.parametrize("tool", TOOLS)
def test_documented_commands_parse(commands, tool):
  payload = json.dumps(commands[tool])
  proc = subprocess.run([sys.executable, "-c", _PARSER, tool], input=payload, cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  errors = json.loads(proc.stdout.strip().splitlines()[-1])
  assert not errors, "\n".join(errors)


def test_documented_plan_commands_run(commands):
  for where, argv in commands["plan"]:
    proc = subprocess.run([sys.executable, "-m", "pbrl_jax.cli.plan_main", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    # A plan that does not fit exits 0 too (it says so); only a crash or a usage error fails.
    assert proc.returncode == 0, f"{where}: pbrl-plan {' '.join(argv)}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip(), f"{where}: pbrl-plan {' '.join(argv)} printed nothing"


def test_a_broken_command_is_caught(tmp_path):
  """The parser really rejects what a doc could get wrong (guards the checks above)."""
  bad = [("x:1", ["--quick", "--no_such_flag"]), ("x:2", ["--steps", "ten"]),
         ("x:3", ["--out="])]
  proc = subprocess.run([sys.executable, "-c", _PARSER, "compare"], input=json.dumps(bad),
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  errors = json.loads(proc.stdout.strip().splitlines()[-1])
  assert [e.split(":")[1] for e in errors[:2]] == ["1", "2"], errors
  bad = [("y:1", ["--workdir", str(tmp_path)]),  # --config is required
         ("y:2", ["--config", "configs/tiny.py", "--workdir", "d", "--config.no_such_key=1"])]
  proc = subprocess.run([sys.executable, "-c", _PARSER, "train"], input=json.dumps(bad),
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  errors = json.loads(proc.stdout.strip().splitlines()[-1])
  assert [e.split(":")[1] for e in errors] == ["1", "2"], errors
