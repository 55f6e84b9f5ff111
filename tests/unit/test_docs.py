"""The documentation is checked like code: README.md and docs/*.md.

- Every `rltool ...` command in a code block validates. `train` and `eval` become `validate` (same
  composition and checks, no model loads); `accelerate launch ... -m rltool train ...` validates what follows
  `-m rltool`; `sbatch --nodes=N --gpus-per-node=G scripts/launch_slurm.sh <overrides>` validates the command the
  script runs on each machine (`hardware=multinode hardware.num_machines=N hardware.num_processes=N*G <overrides>`).
  A sweep (`-m`) is expanded the way Hydra's basic sweeper expands it (every combination of comma-separated
  values) and every combination validates; `hydra/sweeper=...` and `hydra/launcher=...` stay in each combination,
  so their config must compose too (an Optuna sweep's search space is the sweeper's and is not sampled here).
  All commands run through `rltool.cli.main`, the CLI's own entry (argument rewriting, Hydra composition,
  `to_config`, `run("validate", ...)`), one after another in one subprocess per core (2 at most), in a scratch
  directory holding the files the docs define: about 0.3 s a command instead of a fresh interpreter's ~3 s.
- Every code block that defines a Python file (its first line is `# <path>.py`) is imported through the CLI: by the
  documented command that names it (`plugins=[...]`, `reward.module=...`), else by `rltool validate
  plugins=[<file>]`. A block that shows a file shipped in the repository must equal that file.
- The module map in docs/design.md lists every module and package under rltool/ (read from the tree) and nothing
  else; scripts the docs run exist; README's links to docs/ point at pages and headings that exist.

Placeholders in commands (`outputs/<run>`, `<0|1>`, ...) are replaced by PLACEHOLDERS; the scratch directory holds
a fake run (checkpoint and final models) for them. A command that cannot validate here is listed in
CANNOT_VALIDATE with its reason, and must fail with a one-line config error (exit 2); nothing is skipped silently.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PLACEHOLDERS = {
    "outputs/<run>": "outputs/RUN",  # a fake run in the scratch directory: checkpoints/step_000002, final/<actor>
    "<0|1>": "0",  # hardware.machine_rank
    "<machine 0>": "127.0.0.1",  # hardware.main_process_ip
    "<your overrides>": "",  # `rltool validate <your overrides>`: no overrides
    "/path/to/your/hf_model": "./my_model",  # a model directory in the scratch directory (the embedded model's config)
}
CANNOT_VALIDATE: dict[str, str] = {
    # a substring of the command -> why it cannot validate on a machine without network or GPU
}
# Python code blocks whose first line is `# <path>` but which are not files to import: none so far.
NOT_A_FILE: set[str] = set()

ZERO3_PROCESSES = re.search(r"^num_processes: (\d+)", (ROOT / "zero3.yaml").read_text(), re.M).group(1)
"""`accelerate launch --config_file zero3.yaml` without --num_processes starts what zero3.yaml says."""

RUNNER = r'''
import contextlib, io, json, sys, time
from rltool import cli
results, (commands, out_file) = [], sys.argv[1:3]
for argv in json.load(open(commands)):
    start = time.time()
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["rltool", *argv]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # a crash is a result too: the test names the command
            code, err = 99, io.StringIO(f"{type(e).__name__}: {e}")
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    results.append({"code": code, "stderr": lines[-3:], "seconds": round(time.time() - start, 2)})
json.dump(results, open(out_file, "w"))
'''


# ---------------------------------------------------------------------------------------------- extraction

def code_blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, text, first line number) of every fenced block, indented ones (in list items) included."""
    blocks, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start, body = m.group(1), m.group(2), i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith(indent + "```"):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append((lang, "\n".join(body) + "\n", start + 1))
        i += 1
    return blocks


def shell_lines(text: str) -> list[str]:
    """Lines of a shell block, `\\`-continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return [line.strip() for line in out if line.strip()]


def documented_commands() -> list[tuple[str, str]]:
    """(where, shell line) of every line of a shell code block that runs rltool."""
    found = []
    for page in PAGES:
        for lang, text, line in code_blocks(page):
            if lang not in ("bash", "sh", "shell", "console", ""):
                continue
            for cmd in shell_lines(text):
                if runs_rltool(cmd):
                    found.append((f"{page.relative_to(ROOT)}:{line}", cmd))
    return found


def command_tokens(cmd: str) -> list[str]:
    """The words of a shell line, comments and leading `VAR=value` assignments left out."""
    tokens = shlex.split(cmd, comments=True)
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):  # DS_ACCELERATOR=cpu accelerate ...
        tokens.pop(0)
    return tokens


def runs_rltool(cmd: str) -> bool:
    """`rltool ...`, `... -m rltool ...` (accelerate launch), `sbatch ... scripts/launch_slurm.sh ...`."""
    tokens = command_tokens(cmd)
    return bool(tokens) and (tokens[0] == "rltool" or any(pair == ["-m", "rltool"] for pair in zip_pairs(tokens))
                             or (tokens[0] == "sbatch" and any(t.endswith("launch_slurm.sh") for t in tokens)))


def zip_pairs(tokens: list[str]) -> list[list[str]]:
    return [list(pair) for pair in zip(tokens, tokens[1:])]


def substituted_tokens(cmd: str) -> list[str]:
    """The command's words with PLACEHOLDERS filled in; a placeholder left over fails the test."""
    for placeholder, value in PLACEHOLDERS.items():
        cmd = cmd.replace(placeholder, value)
    tokens = command_tokens(cmd)
    left = [t for t in tokens if re.search(r"<[^<>]+>", t)]
    assert not left, f"{cmd}: placeholder(s) {left} not in PLACEHOLDERS (add them, with a value that validates)"
    return tokens


def to_validation(cmd: str) -> tuple[str, list[str]]:
    """('validate' | 'help', argv after `rltool`) for one documented command line."""
    tokens = substituted_tokens(cmd)
    if tokens[0] == "sbatch":
        script = next(i for i, t in enumerate(tokens) if t.endswith("launch_slurm.sh"))
        flags = dict(t.lstrip("-").split("=", 1) for t in tokens[1:script] if t.startswith("--") and "=" in t)
        nodes, gpus = int(flags.get("nodes", 2)), int(flags.get("gpus-per-node", 8))  # the script's #SBATCH defaults
        return "validate", ["hardware=multinode", f"hardware.num_machines={nodes}",
                            f"hardware.num_processes={nodes * gpus}", *tokens[script + 1:]]
    launcher: list[str] = []
    if tokens[0] == "rltool":
        start = 1
    else:  # accelerate launch [--num_processes N] -m rltool ...: the launched ranks run ZeRO-3 on its world size
        start = zip_pairs(tokens).index(["-m", "rltool"]) + 2
        flags = tokens[:start - 2]
        n = flags[flags.index("--num_processes") + 1] if "--num_processes" in flags else ZERO3_PROCESSES
        launcher = [f"hardware.num_processes={n}", "hardware.zero_stage=3"]
    args = tokens[start:]
    if not args or args[0] in ("-h", "--help", "help") or "--help" in args:
        return "help", args
    assert args[0] in ("train", "eval", "validate"), f"{cmd}: unknown rltool command {args[0]!r}"
    return "validate", launcher + [a for a in args[1:] if a not in ("-v", "--verbose")]


def expand_sweep(args: list[str]) -> list[list[str]]:
    """A `-m` command's jobs, as Hydra's basic sweeper makes them (after rltool's own argument rewriting)."""
    if "-m" not in args and "--multirun" not in args:
        return [args]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from rltool.cli import rewrite_overrides

    overrides = rewrite_overrides([a for a in args if a not in ("-m", "--multirun")])
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    return [job for batch in batches for job in batch]


def defined_files() -> list[tuple[str, str, str]]:
    """(where, relative path, text) of every code block whose first line is `# <path>` with a file suffix."""
    files = []
    for page in PAGES:
        for lang, text, line in code_blocks(page):
            m = re.match(r"#\s*([\w./-]+\.(?:py|ya?ml|jsonl))\s*$", text.splitlines()[0]) if text.strip() else None
            if m and lang in ("python", "yaml") and m.group(1) not in NOT_A_FILE:
                files.append((f"{page.relative_to(ROOT)}:{line}", m.group(1), text))
    return files


# ---------------------------------------------------------------------------------------------- scratch dir

def fake_run(root: Path) -> None:
    """outputs/RUN: what a finished language-model run leaves that `resume=` and `actors.path=` check (a real
    trainer state and optimizer file, model directories holding the embedded model's config.json)."""
    import torch

    from rltool.actors.embedded import rltool_home

    config = (rltool_home() / "models" / "smollm2-135m-instruct" / "config.json").read_text()
    run = root / "outputs" / "RUN"
    step = run / "checkpoints" / "step_000002"
    (step / "model").mkdir(parents=True)
    (step / "model" / "config.json").write_text(config)
    torch.save({"step": 2}, step / "trainer_state.pt")
    torch.save({}, step / "optimizer.pt")
    (run / "checkpoints" / "latest").write_text("step_000002\n")
    for actor in ("policy", "solver"):
        (run / "final" / actor).mkdir(parents=True)
        (run / "final" / actor / "config.json").write_text(config)
    (root / "my_model").mkdir()
    (root / "my_model" / "config.json").write_text(config)


def fill_scratch(root: Path) -> None:
    """The directory the commands run in: the repository's examples, a fake run, and every file the docs define."""
    (root / "examples").symlink_to(ROOT / "examples")
    fake_run(root)
    for _, rel, text in defined_files():
        if not (ROOT / rel).exists():  # shipped files are compared, not written (test_shown_files_match_the_repo)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """Every documented command and file import, run once through the CLI in one subprocess."""
    from rltool.actors.embedded import rltool_home

    if not (rltool_home() / "models" / "smollm2-135m-instruct" / "config.json").exists():
        pytest.fail("embedded model not materialized: run `make setup` (python -m rltool.actors.embedded)")
    scratch = tmp_path_factory.mktemp("docs")

    jobs: list[tuple[str, str, list[str]]] = []  # (where, documented command, argv)
    for where, cmd in documented_commands():
        kind, args = to_validation(cmd)
        if kind == "help":
            jobs.append((where, cmd, args))
            continue
        for combo in expand_sweep(args):
            jobs.append((where, cmd, ["validate", *combo]))
    commands_text = " ".join(cmd for _, cmd in documented_commands())
    for where, rel, _ in defined_files():
        if rel.endswith(".py") and rel not in commands_text:  # no documented command imports it: import it here
            jobs.append((where, f"rltool validate 'plugins=[{rel}]'", ["validate", f"plugins=[{rel}]"]))

    unique = list({json.dumps(argv): argv for _, _, argv in jobs}.values())  # a sweep's jobs may repeat a command
    workers = max(1, min(2, os.cpu_count() or 1))  # Hydra composes twice per command: ~0.3 s of CPU each
    procs = []
    for w in range(workers):  # each in its own directory: runs started in the same second share a run dir name
        workdir = scratch / f"worker{w}"
        workdir.mkdir()
        fill_scratch(workdir)
        (workdir / "argv.json").write_text(json.dumps(unique[w::workers]))
        procs.append(subprocess.Popen([sys.executable, "-c", RUNNER, "argv.json", "results.json"], cwd=workdir,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    by_argv = {}
    for w, proc in enumerate(procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results = json.loads((scratch / f"worker{w}" / "results.json").read_text())
        by_argv.update({json.dumps(argv): r for argv, r in zip(unique[w::workers], results)})
    return [(where, cmd, argv, by_argv[json.dumps(argv)]) for where, cmd, argv in jobs]


# ---------------------------------------------------------------------------------------------- tests

def test_the_docs_have_commands_to_check():
    commands = documented_commands()
    assert len(commands) >= 50, f"only {len(commands)} rltool commands found: is the extraction broken?"
    assert any("examples/own_task/sums.jsonl" in cmd for page, cmd in commands
               if page.startswith(PAGES[0].name + ":"))


def test_every_documented_command_validates(validated):
    failures = []
    for where, cmd, argv, result in validated:
        reason = next((why for key, why in CANNOT_VALIDATE.items() if key in cmd), None)
        if reason:
            if result["code"] != 2:
                failures.append(f"{where}: `{cmd}` is listed in CANNOT_VALIDATE ({reason}) but exited "
                                f"{result['code']}: validate it, or fix the list")
        elif result["code"] != 0:
            failures.append(f"{where}: `{cmd}`\n    rltool {' '.join(map(shlex.quote, argv))}\n    exit {result['code']}: "
                            + " | ".join(result["stderr"]))
    assert not failures, "documented commands that do not validate:\n" + "\n".join(failures)


def test_every_code_block_that_defines_a_file_is_imported(validated):
    imported = " ".join(" ".join(argv) for _, _, argv, r in validated if r["code"] == 0)
    missing = [f"{where}: {rel}" for where, rel, _ in defined_files() if rel.endswith(".py") and rel not in imported]
    assert not missing, f"code blocks defining Python files that no passing command imported: {missing}"


def test_shown_files_match_the_repo():
    """A block headed by the path of a file the repository ships shows that file as it is."""
    stale = [f"{where}: {rel}" for where, rel, text in defined_files()
             if (ROOT / rel).exists() and text.strip() != "\n".join(
                 [f"# {rel}", (ROOT / rel).read_text().strip()]).strip()]
    assert not stale, f"code blocks that differ from the file they show (copy the file into the block): {stale}"


def test_the_module_map_lists_every_module():
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(rltool/[\w/.]*)` \|", section, re.M))
    files = [p for p in (ROOT / "rltool").rglob("*.py") if "conf" not in p.relative_to(ROOT).parts]
    tree = {p.relative_to(ROOT).as_posix() for p in files if p.name not in ("__init__.py", "__main__.py")}
    tree |= {p.parent.relative_to(ROOT).as_posix() + "/" for p in files
             if p.name == "__init__.py" and p.parent != ROOT / "rltool"}
    assert not tree - listed, f"docs/design.md's module map misses (add a row each): {sorted(tree - listed)}"
    assert not listed - tree, f"docs/design.md's module map lists what is not in rltool/ (remove or rename): " \
                              f"{sorted(listed - tree)}"


def test_scripts_the_docs_run_exist():
    missing = []
    for page in PAGES:
        for lang, text, line in code_blocks(page):
            for script in re.findall(r"(?:python|bash|sbatch[^\n]*?)\s+(scripts/[\w./-]+)", text):
                if not (ROOT / script).exists():
                    missing.append(f"{page.relative_to(ROOT)}:{line}: {script}")
    assert not missing, missing


def test_readme_links_to_docs_exist():
    """mkdocs --strict checks links between docs pages (make docs); README.md is outside the site."""
    from markdown.extensions.toc import slugify

    bad = []
    for target, anchor in re.findall(r"\]\((docs/[\w./-]+\.md)(?:#([\w-]+))?\)", PAGES[0].read_text()):
        page = ROOT / target
        if not page.exists():
            bad.append(target)
            continue
        headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
        anchors = {slugify(re.sub(r"`", "", h), "-") for h in headings}
        if anchor and anchor not in anchors:
            bad.append(f"{target}#{anchor}")
    assert not bad, f"README.md links to missing docs pages or headings: {bad}"


def test_readme_is_short():
    assert len(PAGES[0].read_text().splitlines()) <= 200


def test_no_internal_references():
    """User docs speak to users: no tracker numbers ("#15") or talk about issues."""
    found = [f"{page.relative_to(ROOT)}:{n}: {line.strip()}" for page in PAGES
             for n, line in enumerate(page.read_text().splitlines(), 1)
             if re.search(r"(?<![\w&#])#\d{1,3}\b|\bissues?\b", line, re.I)]
    assert not found, found
