"""The Makefile as a user meets it: `make help`, `make wasm` on a plain rustup toolchain, and
`make dist` (the released file and its SHA-256).

* Every target has a `## help` text and `make help` lists it.
* `make wasm` with rustup's wasm32-wasip1 target never runs apt-get, and uses wasm-opt only when
  it is on PATH (absent: one note, cargo's output is kept). This runs in a sandbox: a copy of the
  Makefile and Cargo.toml, a fake `rustup` that reports the target installed, a fake `cargo`
  that writes a minimal module, an `apt-get` that records being called, and a PATH holding only
  the ordinary tools (so the machine's own wasm-opt and apt-get are out of reach).
* `make dist` in the repository writes `edge_token_relay.wasm` and a `.sha256` in exactly
  `sha256sum` format that `sha256sum -c` accepts, and prints the version from Cargo.toml.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from support import REPO_ROOT, WASM_PATH

MAKEFILE = REPO_ROOT / "Makefile"
MAKE = shutil.which("make")
# The targets users and CI rely on (README, .ci/run); none may disappear.
REQUIRED_TARGETS = {"help", "wasm", "dist", "test", "unit", "e2e", "run", "bench", "lint", "fmt",
                    "envoy", "idp", "browser", "fuzz", "clean", "toolchain"}
# A module with no sections: valid for wasm-opt, enough for the Makefile's steps.
EMPTY_MODULE = b"\0asm\x01\0\0\0"
TOOLS = ("bash", "sh", "sed", "grep", "awk", "ls", "mv", "cp", "cat", "mkdir", "head", "find",
         "sha256sum", "wc", "tr", "cut", "rm", "env", "dirname", "basename", "printf", "echo",
         "test", "true", "false", "tail", "sort", "uname")


def cargo_version() -> str:
    m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"',
                  (REPO_ROOT / "Cargo.toml").read_text(), re.M | re.S)
    assert m, "no [package] version in Cargo.toml"
    return m.group(1)


def makefile_targets() -> dict[str, str]:
    """{target: help text} for every explicit rule of the Makefile (not variables, not file
    targets, not .PHONY)."""
    out = {}
    for line in MAKEFILE.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_-]+):(?![:=])(.*)$", line)
        if m:
            help_text = m.group(2).partition("## ")[2].strip()
            out[m.group(1)] = help_text
    return out


def test_every_make_target_has_help():
    targets = makefile_targets()
    assert REQUIRED_TARGETS <= set(targets), sorted(REQUIRED_TARGETS - set(targets))
    missing = [t for t, text in targets.items() if not text]
    assert not missing, f"Makefile targets without a `## help` text: {missing}"
    out = subprocess.run([MAKE, "-s", "help"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    listed = set(re.findall(r"^\s+make (\S+)", out.stdout, re.M))
    assert listed == set(targets), (sorted(set(targets) - listed), sorted(listed - set(targets)))


# --------------------------------------------------------------------------------------------
# make wasm with a rustup target, in a sandbox
# --------------------------------------------------------------------------------------------


def _script(path: Path, text: str) -> None:
    path.write_text("#!/bin/bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def make_sandbox(tmp_path: Path, *, wasm_opt: bool) -> tuple[Path, dict]:
    """A directory with the Makefile, and the environment to run it in."""
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    shutil.copy(MAKEFILE, work / "Makefile")
    shutil.copy(REPO_ROOT / "Cargo.toml", work / "Cargo.toml")
    shutil.copy(REPO_ROOT / "Cargo.lock", work / "Cargo.lock")
    (work / "src" / "lib.rs").write_text("")
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    _script(bin_dir / "rustup", f"""echo "rustup $*" >> {log}
if [ "$1 $2 $3" = "target list --installed" ]; then
  printf 'wasm32-wasip1\\nx86_64-unknown-linux-gnu\\n'; exit 0
fi
exit 1
""")
    _script(bin_dir / "cargo", f"""echo "cargo $*" >> {log}
mkdir -p target/wasm32-wasip1/release
printf '\\0asm\\1\\0\\0\\0' > target/wasm32-wasip1/release/edge_token_relay.wasm
""")
    for name in ("apt-get", "apt", "sudo"):
        _script(bin_dir / name, f'echo "{name} $*" >> {log}\nexit 100\n')
    if wasm_opt:
        real = shutil.which("wasm-opt")
        if real is None:
            pytest.skip("binaryen's wasm-opt is not installed here")
        _script(bin_dir / "wasm-opt", f'echo "wasm-opt $*" >> {log}\nexec {real} "$@"\n')
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "LC_ALL": "C"}
    return work, env


def run_make(work: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAKE, "--no-print-directory", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_make_wasm_with_rustup_target_and_no_wasm_opt(tmp_path):
    work, env = make_sandbox(tmp_path, wasm_opt=False)
    out = run_make(work, env, "wasm")
    assert out.returncode == 0, out.stdout + out.stderr
    log = calls(tmp_path)
    assert "cargo rustc --release --target wasm32-wasip1 --lib --crate-type cdylib" in log, log
    assert not [c for c in log if c.split()[0] in ("apt-get", "apt", "sudo")], log
    notes = [ln for ln in out.stdout.splitlines() if "wasm-opt" in ln]
    assert notes == ["note: wasm-opt (binaryen) not found, skipping the optional size pass "
                     "(docs/building.md)"], out.stdout
    assert (work / "target/wasm32-wasip1/release/edge_token_relay.wasm").read_bytes() == EMPTY_MODULE


def test_make_wasm_with_rustup_target_uses_wasm_opt_when_present(tmp_path):
    work, env = make_sandbox(tmp_path, wasm_opt=True)
    out = run_make(work, env, "wasm")
    assert out.returncode == 0, out.stdout + out.stderr
    log = calls(tmp_path)
    assert not [c for c in log if c.split()[0] in ("apt-get", "apt", "sudo")], log
    opt = [c for c in log if c.startswith("wasm-opt ")]
    assert len(opt) == 1 and " -Oz " in opt[0], log
    assert "not found" not in out.stdout
    built = work / "target/wasm32-wasip1/release/edge_token_relay.wasm"
    first = built.read_bytes()
    # A second build gives the same file (the size pass starts from cargo's output, or is skipped
    # when the file is already the optimized one).
    out = run_make(work, env, "wasm")
    assert out.returncode == 0, out.stdout + out.stderr
    assert built.read_bytes() == first


def test_make_dist_in_the_sandbox(tmp_path):
    work, env = make_sandbox(tmp_path, wasm_opt=False)
    out = run_make(work, env, "dist")
    assert out.returncode == 0, out.stdout + out.stderr
    check_dist(work / "dist", out.stdout, work / "target/wasm32-wasip1/release/edge_token_relay.wasm")
    assert not [c for c in calls(tmp_path) if c.split()[0] in ("apt-get", "apt", "sudo")]


# --------------------------------------------------------------------------------------------
# make dist in the repository
# --------------------------------------------------------------------------------------------


def check_dist(dist: Path, stdout: str, built: Path) -> None:
    wasm = dist / "edge_token_relay.wasm"
    sums = dist / "edge_token_relay.wasm.sha256"
    assert sorted(p.name for p in dist.iterdir()) == [wasm.name, sums.name]
    assert wasm.read_bytes() == built.read_bytes()
    digest = hashlib.sha256(wasm.read_bytes()).hexdigest()
    # Exactly what `sha256sum edge_token_relay.wasm` prints: hex, two spaces, the bare name.
    assert sums.read_text() == f"{digest}  edge_token_relay.wasm\n"
    check = subprocess.run(["sha256sum", "-c", sums.name], cwd=dist, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and check.stdout == "edge_token_relay.wasm: OK\n", check
    lines = stdout.splitlines()
    assert f"edge-token-relay {cargo_version()}" in lines, stdout
    assert any(digest in ln for ln in lines), stdout


def test_make_dist(wasm_file, tmp_path):
    dist = tmp_path / "dist"
    env = dict(os.environ)
    out = subprocess.run([MAKE, "--no-print-directory", "dist", f"DIST={dist}"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    check_dist(dist, out.stdout, WASM_PATH)
    # A tampered file fails the check.
    wasm = dist / "edge_token_relay.wasm"
    wasm.write_bytes(wasm.read_bytes() + b"\0")
    check = subprocess.run(["sha256sum", "-c", "edge_token_relay.wasm.sha256"], cwd=dist,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0


def test_dist_is_gitignored():
    assert "/dist" in (REPO_ROOT / ".gitignore").read_text().split()


# --------------------------------------------------------------------------------------------
# The documentation points only inside the repository
# --------------------------------------------------------------------------------------------

DOCS = ["README.md", "CHANGELOG.md", "tests/e2e/README.md"] + \
    sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


@pytest.mark.parametrize("doc", DOCS)
def test_documentation_links_stay_inside_the_repository(doc):
    path = REPO_ROOT / doc
    text = path.read_text()
    assert not re.search(r"\.\./shared", text), "a path outside the repository"
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"^[a-z]+:", target):
            continue  # a web address
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if REPO_ROOT.resolve() not in dest.parents and dest != REPO_ROOT.resolve():
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest.read_text()):
            problems.append(f"{target}: no such heading")
    assert not problems, problems
