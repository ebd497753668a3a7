"""Fixtures for the e2e suite: the real Envoy running the built .wasm.

* `wasm_file`: the built module; the test FAILS (never skips) when it is missing.
* `keys`: one KeyPair per algorithm (RS256, ES256, EdDSA), served by the IdP.
* `relay_stack(**kw)`: a context manager starting IdP + upstream + Envoy (see
  support.RelayStack); module fixtures in the test files share one stack where tests do not
  interfere.
* On failure, the log of every Envoy that ran during the test (the part written during the
  test, capped) is attached to the report.
* After a passing run, the temp dirs (e2e-*) of every Envoy and IdP are removed; after a
  failed one they stay for inspection.
"""

from __future__ import annotations

import contextlib
import shutil
import time

import pytest

pytest.register_assert_rewrite("checks")

import support  # noqa: E402
from idp import Idp  # noqa: E402
from support import Envoy, KeyPair, RelayStack  # noqa: E402

LOG_TAIL_LINES = 150


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    try:
        return support.find_envoy()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def wasm_file(envoy_bin) -> str:
    if not support.WASM_PATH.is_file():
        pytest.fail(f"the filter is not built: {support.WASM_PATH} is missing (run `make wasm`)",
                    pytrace=False)
    return str(support.WASM_PATH)


@pytest.fixture(scope="session")
def keys() -> dict[str, KeyPair]:
    return {alg: KeyPair.generate(alg) for alg in KeyPair.ALGS}


@pytest.fixture(scope="session")
def relay_stack(wasm_file, keys):
    """Factory: `with relay_stack(...) as stack:` (keys default to the session keys)."""

    @contextlib.contextmanager
    def factory(**kw):
        kw.setdefault("keys", list(keys.values()))
        stack = RelayStack(**kw)
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()

    return factory


# --------------------------------------------------------------------------------------------
# Envoy logs in failure reports
# --------------------------------------------------------------------------------------------

_log_offsets = pytest.StashKey[dict]()
_test_start = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_test_start] = time.time()
    item.stash[_log_offsets] = {id(e): e.log_size() for e in Envoy.instances if e.running}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    started = item.stash.get(_test_start, 0.0)
    offsets = item.stash.get(_log_offsets, {})
    for env in Envoy.instances:
        if env.stopped_at is not None and env.stopped_at < started:
            continue  # finished before this test began
        since = offsets.get(id(env), 0)
        report.sections.append((f"Envoy '{env.name}' log ({env.log_path}, {report.when})",
                                _log_excerpt(env, since, item.name)))


def _log_excerpt(env: Envoy, since: int, test_name: str) -> str:
    """The log written during the test (last LOG_TAIL_LINES lines); when that is short, also
    the lines that led up to it."""
    try:
        data = env.log_path.read_bytes()
    except FileNotFoundError:
        return "(no log file)"
    during = data[since:].decode(errors="replace").splitlines()
    if len(during) > LOG_TAIL_LINES:
        during = [f"... ({len(during) - LOG_TAIL_LINES} lines omitted)"] + during[-LOG_TAIL_LINES:]
    if since == 0 or len(during) >= 20:
        return "\n".join(during)
    before = data[:since].decode(errors="replace").splitlines()[-30:]
    return "\n".join(before + [f"----- {test_name} starts here -----"] + during)


def pytest_sessionfinish(session, exitstatus):
    support.stop_all_envoys()
    # Every Envoy's and IdP's temp dir (config, logs): removed here, after the last test that
    # may read a log, not by stop().
    parts = [*Envoy.instances, *Idp.instances]
    if exitstatus == 0:  # keep the logs of a failed run for inspection
        for part in parts:
            shutil.rmtree(part.tmp, ignore_errors=True)
    elif parts:
        dirs = sorted({str(part.tmp.parent) for part in parts})
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"Envoy and IdP configs and logs kept under {', '.join(dirs)} (e2e-*)")
