"""How the serve tests start Ray on a busy machine (tests/serve/conftest.py), without starting Ray.

`ray.init`, `ray.shutdown` and the process clean-up are replaced by recorders; the failure is
Ray 2.60's own (a plain `Exception` with its message), so these tests break if the retry stops
catching what Ray really raises. The last test pins the Ray code that `patient_start` relies on.
"""

from __future__ import annotations

import importlib
import inspect
import os

import pytest

ray = pytest.importorskip("ray")

from tests.serve import conftest as serve_conftest  # noqa: E402  (after the importorskip)

PATIENT_KEYS = (serve_conftest.GCS_WAIT_ENV, *serve_conftest.PATIENT_SERVE_ENV)
PATIENT = {serve_conftest.GCS_WAIT_ENV: str(serve_conftest.START_WAIT_S), **serve_conftest.PATIENT_SERVE_ENV}
# What ray/_private/node.py raises when the raylet has not registered within its 30 s.
RAY_STARTUP_TIMEOUT = ("The current node timed out during startup. This could happen because some of the raylet "
                       "failed to startup or the GCS has become overloaded.")


@pytest.fixture
def calls(monkeypatch) -> list[tuple]:
    """Every ray.init / ray.shutdown / serve.shutdown / process clean-up, in order; Ray never starts."""
    from ray import serve

    seen: list[tuple] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda **kw: seen.append(("shutdown", kw)))
    monkeypatch.setattr(serve, "shutdown", lambda: seen.append(("serve.shutdown",)))
    # The real clean-up ends this process's children: none of a unit test's business.
    monkeypatch.setattr(serve_conftest, "own_processes", lambda: set())
    monkeypatch.setattr(serve_conftest, "end_processes", lambda procs, wait_s=0: seen.append(("end_processes",)))
    return seen


def failing_init(calls: list[tuple], failures: list[BaseException]):
    """A `ray.init` that raises `failures` one by one, then succeeds; each call is recorded with
    the patient start's environment at the time (the GCS wait, and Serve's proxy waits, which the
    processes Ray starts inherit)."""

    def init(**kwargs):
        calls.append(("init", kwargs.get("address"), {k: os.environ.get(k) for k in PATIENT_KEYS}))
        if failures:
            raise failures.pop(0)

    return init


@pytest.fixture(autouse=True)
def _no_explicit_settings(monkeypatch):
    """The patient values apply where nobody set their own."""
    for key in PATIENT_KEYS:
        monkeypatch.delenv(key, raising=False)


def test_a_startup_timeout_is_retried_once_after_a_clean_shutdown(calls, monkeypatch):
    monkeypatch.setattr(ray, "init", failing_init(calls, [Exception(RAY_STARTUP_TIMEOUT)]))

    port = serve_conftest.start_ray()

    assert isinstance(port, int) and port > 0
    inits = [c for c in calls if c[0] == "init"]
    assert inits == [("init", "local", PATIENT), ("init", "local", PATIENT)]
    # Between the two tries: the failed Ray shut down (and waited for), its processes ended.
    first, second = (i for i, c in enumerate(calls) if c[0] == "init")
    between = calls[first + 1:second]
    assert ("shutdown", {"wait_for_processes": True}) in between and ("end_processes",) in between
    # The knobs are set only while starting: nothing leaks into later tests.
    assert not set(PATIENT_KEYS) & set(os.environ)


def test_an_explicit_setting_wins(calls, monkeypatch):
    monkeypatch.setenv(serve_conftest.GCS_WAIT_ENV, "45")
    monkeypatch.setattr(ray, "init", failing_init(calls, []))
    serve_conftest.start_ray()
    assert [c[2] for c in calls if c[0] == "init"] == [{**PATIENT, serve_conftest.GCS_WAIT_ENV: "45"}]
    assert os.environ[serve_conftest.GCS_WAIT_ENV] == "45"


def test_a_second_startup_timeout_propagates_after_cleaning_up(calls, monkeypatch):
    monkeypatch.setattr(ray, "init", failing_init(calls, [Exception(RAY_STARTUP_TIMEOUT),
                                                          Exception(RAY_STARTUP_TIMEOUT)]))
    with pytest.raises(Exception, match="timed out during startup"):
        serve_conftest.start_ray()
    assert [c[0] for c in calls].count("init") == 2
    # Nothing of the failed start is left running: cleaned after the last try too.
    assert calls[-1] == ("end_processes",) and ("shutdown", {"wait_for_processes": True}) in calls[-4:]


def test_other_errors_are_not_retried(calls, monkeypatch):
    monkeypatch.setattr(ray, "init", failing_init(calls, [ValueError("unknown argument: _metrics_export_port")]))
    with pytest.raises(ValueError, match="unknown argument"):
        serve_conftest.start_ray()
    assert [c[0] for c in calls].count("init") == 1


def test_a_multinode_cluster_that_times_out_is_shut_down_and_started_again(calls, monkeypatch):
    """start_cluster: the half-started Cluster of the failed try is shut down before the second."""
    import ray.cluster_utils

    made: list[FakeCluster] = []

    class FakeCluster:
        address = "127.0.0.1:6379"

        def __init__(self) -> None:
            self.nodes: list[dict] = []
            self.down = False
            made.append(self)

        def add_node(self, wait: bool = True, **args):
            assert wait is False  # the suite waits itself, longer than Cluster's 30 s
            self.nodes.append(args)
            return f"node{len(self.nodes)}"

        def _wait_for_node(self, node, timeout: float) -> None:
            assert timeout == serve_conftest.START_WAIT_S
            if len(made) == 1 and node == "node2":  # the first try's worker node never shows up
                raise TimeoutError("Timed out while waiting for node to startup.")

        def shutdown(self) -> None:
            self.down = True

    monkeypatch.setattr(ray.cluster_utils, "Cluster", FakeCluster)
    monkeypatch.setattr(ray, "init", failing_init(calls, []))
    cluster, nodes = serve_conftest.start_cluster({"num_cpus": 2}, {"num_cpus": 1, "resources": {"pin": 1}})
    assert len(made) == 2 and made[0].down and not made[1].down
    assert cluster is made[1] and nodes == ["node2"]
    assert made[1].nodes == [{"num_cpus": 2}, {"num_cpus": 1, "resources": {"pin": 1}}]
    assert [c for c in calls if c[0] == "init"] == [("init", FakeCluster.address, PATIENT)]


def test_patient_get_node_waits_for_the_raylet_then_restores_rays_function(monkeypatch):
    import ray._private.services as services

    answers = [RuntimeError("node not found"), RuntimeError("node not found"), {"node_id": "abc"}]

    def get_node(gcs_address, node_id):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(services, "get_node", get_node)
    with serve_conftest.patient_start(wait_s=60, retry_every_s=0):
        # One call, as Ray's loop makes it: the two misses are retried inside.
        assert services.get_node("gcs", "abc") == {"node_id": "abc"}
    assert answers == [] and services.get_node is get_node
    # Past the wait, Ray's own error comes back (Ray's loop then raises its timeout).
    answers[:] = [RuntimeError("node not found")] * 3
    with serve_conftest.patient_start(wait_s=0, retry_every_s=0), pytest.raises(RuntimeError, match="not found"):
        services.get_node("gcs", "abc")


def test_a_raylet_that_exited_fails_the_wait_at_once(monkeypatch, tmp_path, caplog):
    """A raylet that aborted (a busy machine: its dashboard agent was late) never registers: no point
    waiting the whole `wait_s`; its fatal log line is reported, and the start is tried again."""
    import ray._private.services as services

    raylet_out = tmp_path / "raylet.out"
    raylet_out.write_text("[...] I (raylet) main.cc:283: Setting cluster ID\n[...] C (raylet) node_manager.cc:3588: "
                          "Check failed: Timed out waiting for file /tmp/ray/s/dashboard_agent_listen_port_abc\n")

    class Raylet:  # alive for two checks, then gone
        checks = 0

        def is_running(self) -> bool:
            Raylet.checks += 1
            return Raylet.checks <= 2

        def status(self) -> str:
            return "running"

    monkeypatch.setattr(serve_conftest, "find_raylet",
                        lambda node_id: (Raylet(), ["raylet", f"--node_id={node_id}",
                                                    f"--stdout_filepath={raylet_out}"]))
    asked: list[str] = []

    def get_node(gcs_address, node_id):
        asked.append(node_id)
        raise RuntimeError("node not found")

    monkeypatch.setattr(services, "get_node", get_node)
    # An hour's wait: only the raylet's exit can end this call.
    with serve_conftest.patient_start(wait_s=3600, retry_every_s=0), pytest.raises(RuntimeError, match="not found"):
        services.get_node("gcs", "abc")
    assert asked == ["abc"] * 3 and Raylet.checks == 3
    assert "dashboard_agent_listen_port_abc" in caplog.text and "exited during start-up" in caplog.text


def test_the_ray_code_the_patient_start_relies_on_is_unchanged():
    """`patient_start` lengthens the raylet wait by retrying inside `ray._private.services.get_node`,
    which Ray 2.60's `Node.__init__` calls through the module, catching RuntimeError, for 30 s; the
    GCS wait through `RAY_gcs_server_port_wait_time_s`; Serve's proxy waits through their variables.
    If a Ray upgrade changes any, this fails (instead of the serve tests quietly going back to Ray's
    defaults)."""
    import ray._private.node as node

    source = inspect.getsource(node)
    assert "node_info = ray._private.services.get_node(" in source
    assert "raylet_start_wait_time_s = 30" in source and "except RuntimeError as e:" in source
    assert f'os.environ.get("{serve_conftest.GCS_WAIT_ENV}"' in source
    assert "timed out during startup" in source  # the message is_startup_failure keys on
    serve_constants = inspect.getsource(importlib.import_module("ray.serve._private.constants"))
    for key in serve_conftest.PATIENT_SERVE_ENV:
        assert f'"{key}"' in serve_constants, key
    assert serve_conftest.is_startup_failure(Exception(RAY_STARTUP_TIMEOUT))
    assert not serve_conftest.is_startup_failure(ValueError("unknown argument"))
