"""werkbank_lab.resources: the allocation × time, energy from fake NVML and RAPL counters, and the
metrics and tags landing on a real MLflow run (a SQLite store in tmp_path)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils

from werkbank_lab.resources import (
    ALLOCATION_TAG,
    CPU_ENERGY_TAG,
    GPU_ENERGY_TAG,
    ResourceMeter,
    Resources,
    current_allocation,
    log_resources,
    system_metrics_available,
)

HOUR = 3600.0
#: A real package's range (a Xeon's): the counter restarts from 0 after ~262 kJ.
MAX_RANGE_UJ = 262_143_328_850
#: 200 W: the counter goes round in ~22 min at the power limit.
POWER_LIMIT_UW = 200_000_000


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: The messages of the NVML errors the fakes raise, by NVML's error code.
NVML_MESSAGES = {3: "Not Supported", 12: "NVML Shared Library Not Found"}


class FakeNVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return NVML_MESSAGES[self.value]


class FakeNvml:
    """pynvml's calls that resources.py makes; a handle is the GPU's UUID."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = 3

    def __init__(self, energy_mj: dict[str, int], init_error: int | None = None, energy_error=None):
        self.energy_mj, self.init_error, self.energy_error = energy_mj, init_error, energy_error
        self.initialised = 0

    def nvmlInit(self):
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.energy_mj)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return list(self.energy_mj)[index]

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return handle

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        if self.energy_error is not None:
            raise FakeNVMLError(self.energy_error)
        return self.energy_mj[handle]


class FakeCuda:
    """torch.cuda's calls that resources.py makes: devices by UUID (torch spells them without GPU-)."""

    def __init__(self, uuids: list[str] = (), peak_bytes: list[int] = ()):
        self.uuids, self.peak_bytes, self.resets = list(uuids), list(peak_bytes), []

    def is_available(self) -> bool:
        return bool(self.uuids)

    def device_count(self) -> int:
        return len(self.uuids)

    def reset_peak_memory_stats(self, device: int):
        self.resets.append(device)

    def max_memory_allocated(self, device: int) -> int:
        return self.peak_bytes[device]

    def get_device_properties(self, device: int):
        return SimpleNamespace(uuid=self.uuids[device])


NO_CUDA = FakeCuda()
SLURM_CPU_JOB = {"SLURM_JOB_ID": "123", "SLURM_CPUS_ON_NODE": "4", "SLURM_JOB_NUM_NODES": "1"}
SLURM_GPU_JOB = {**SLURM_CPU_JOB, "SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,2"}


def meter(tmp_path: Path, clock: FakeClock, **overrides) -> ResourceMeter:
    """A meter on fakes: no RAPL (an empty powercap tree), no CUDA, unless ``overrides`` say."""
    options = {"environ": SLURM_CPU_JOB, "powercap_root": tmp_path / "powercap", "cuda": NO_CUDA}
    return ResourceMeter(clock=clock, **(options | overrides))


def measure(meter: ResourceMeter, clock: FakeClock, seconds: float, during=lambda: None) -> Resources:
    meter.start()
    clock.now += seconds
    during()
    return meter.stop()


# --- the allocation ---------------------------------------------------------------------------


def test_cpu_and_gpu_hours_are_the_allocation_times_the_wall_time(tmp_path):
    clock = FakeClock()
    resources = measure(meter(tmp_path, clock, environ=SLURM_GPU_JOB), clock, 1.5 * HOUR)
    assert resources.metrics["resources.wall_hours"] == pytest.approx(1.5)
    assert resources.metrics["resources.cpu_hours"] == pytest.approx(6.0)
    assert resources.metrics["resources.gpu_hours"] == pytest.approx(3.0)
    assert resources.tags[ALLOCATION_TAG] == "Slurm job 123: 4 CPUs, 2 GPUs, 1 node"


def test_a_cpu_job_has_no_gpu_hours_and_says_why_there_is_no_gpu_energy(tmp_path):
    clock = FakeClock()
    resources = measure(meter(tmp_path, clock), clock, HOUR)
    assert resources.metrics["resources.gpu_hours"] == 0
    assert resources.tags[GPU_ENERGY_TAG] == "not measurable: no GPU in this session"
    assert "resources.gpu_peak_memory_gb" not in resources.metrics
    assert "resources.energy_kwh" not in resources.metrics  # nothing was measured: no 0 that looks real


@pytest.mark.parametrize(
    ("environ", "cpus", "gpus", "nodes"),
    [
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "8"}, 8, 0, 1),
        # all nodes' CPUs from Slurm's compressed list; GPUs: this node's count × nodes
        ({"SLURM_JOB_ID": "7", "SLURM_JOB_CPUS_PER_NODE": "4(x2),8", "SLURM_CPUS_ON_NODE": "4",
          "SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_ON_NODE": "1"}, 16, 3, 3),
        # older Slurm: no SLURM_GPUS_ON_NODE, the GPUs are those --gres put in CUDA_VISIBLE_DEVICES
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "1,3"}, 2, 2, 1),
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "NoDevFiles"}, 2, 0, 1),
    ],
)  # fmt: skip
def test_slurm_allocation(environ, cpus, gpus, nodes):
    allocation = current_allocation(environ, cuda=FakeCuda(["aaa"]))  # Slurm's figures win over torch's
    assert (allocation.cpus, allocation.gpus, allocation.nodes) == (cpus, gpus, nodes)
    assert allocation.description.startswith("Slurm job 7: ")


def test_outside_slurm_the_allocation_is_this_processs_cpus_and_torchs_gpus():
    allocation = current_allocation({}, cuda=FakeCuda(["aaa", "bbb"]))
    cpus = len(os.sched_getaffinity(0))
    assert (allocation.cpus, allocation.gpus) == (cpus, 2)
    assert allocation.description == (
        f"not in a Slurm job: this process's {cpus} CPU{'s' * (cpus != 1)} (its CPU affinity), "
        "2 GPUs (as torch.cuda sees them)"
    )


def test_outside_slurm_without_torch_no_gpus_are_counted_and_the_tag_says_why(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    clock = FakeClock()
    resources = measure(meter(tmp_path, clock, environ={}, cuda=None), clock, HOUR)
    assert resources.metrics["resources.gpu_hours"] == 0
    assert resources.tags[ALLOCATION_TAG].endswith("0 GPUs (torch is not installed)")


def test_stop_without_start_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="start"):
        meter(tmp_path, FakeClock()).stop()


# --- GPU energy and memory --------------------------------------------------------------------


def test_gpu_energy_of_the_sessions_two_gpus_in_kwh(tmp_path):
    """NVML sees three GPUs; torch.cuda two of them: only theirs count. 3.6e9 mJ = 1 kWh."""
    nvml = FakeNvml({"GPU-aaa": 10_000, "GPU-bbb": 20_000, "GPU-ccc": 30_000})
    cuda = FakeCuda(["aaa", "ccc"], peak_bytes=[3_000_000_000, 5_500_000_000])

    def gpus_work():
        nvml.energy_mj["GPU-aaa"] += 1_800_000_000
        nvml.energy_mj["GPU-bbb"] += 7_200_000_000  # another job's GPU
        nvml.energy_mj["GPU-ccc"] += 900_000_000

    clock = FakeClock()
    resources = measure(meter(tmp_path, clock, environ={}, nvml=nvml, cuda=cuda), clock, HOUR, gpus_work)
    assert resources.metrics["resources.gpu_energy_kwh"] == pytest.approx(0.75)
    assert resources.metrics["resources.energy_kwh"] == pytest.approx(0.75)  # no RAPL here
    assert resources.tags[GPU_ENERGY_TAG] == "measured (NVML total energy counter, 2 GPUs)"
    assert resources.metrics["resources.gpu_peak_memory_gb"] == pytest.approx(5.5)  # the larger device
    assert cuda.resets == [0, 1]
    assert nvml.initialised == 0  # every nvmlInit has its nvmlShutdown


def test_without_torch_cuda_the_gpus_are_those_in_cuda_visible_devices(tmp_path):
    nvml = FakeNvml({"GPU-aaa": 0, "GPU-bbb": 0, "GPU-ccc": 0})
    environ = {**SLURM_CPU_JOB, "CUDA_VISIBLE_DEVICES": "0,GPU-cc"}  # an index and a UUID prefix

    def gpus_work():
        nvml.energy_mj = {"GPU-aaa": 360_000_000, "GPU-bbb": 3_600_000_000, "GPU-ccc": 720_000_000}

    clock = FakeClock()
    resources = measure(meter(tmp_path, clock, environ=environ, nvml=nvml), clock, HOUR, gpus_work)
    assert resources.metrics["resources.gpu_energy_kwh"] == pytest.approx(0.3)
    assert resources.metrics["resources.gpu_hours"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("nvml", "why"),
    [
        (FakeNvml({"GPU-aaa": 0}, init_error=12), "nvidia-ml-py cannot initialise NVML: NVML Shared Library"),
        (FakeNvml({"GPU-aaa": 0}, energy_error=3), "a GPU has no total energy counter (NVML: Not Supported"),
    ],
)
def test_gpu_energy_that_nvml_cannot_give_is_a_tag_saying_why(tmp_path, nvml, why):
    clock = FakeClock()
    resources = measure(meter(tmp_path, clock, environ=SLURM_GPU_JOB, nvml=nvml), clock, HOUR)
    assert resources.tags[GPU_ENERGY_TAG].startswith(f"not measurable: {why}")
    assert "resources.gpu_energy_kwh" not in resources.metrics
    assert resources.metrics["resources.gpu_hours"] == pytest.approx(2.0)  # the allocation still counts
    assert nvml.initialised == 0


def test_the_real_nvidia_ml_py_without_a_gpu_gives_a_tag_not_an_exception(tmp_path):
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has NVML: the no-GPU path is not what happens here")
    clock = FakeClock()
    resources = measure(meter(tmp_path, clock, environ=SLURM_GPU_JOB, nvml=None), clock, HOUR)
    assert resources.tags[GPU_ENERGY_TAG].startswith("not measurable: nvidia-ml-py cannot initialise NVML: ")


# --- CPU energy: RAPL -------------------------------------------------------------------------


def rapl_domain(root: Path, name: str, energy_uj: int, power_limit_uw: int | None = POWER_LIMIT_UW) -> Path:
    domain = root / name
    domain.mkdir(parents=True)
    (domain / "energy_uj").write_text(f"{energy_uj}\n")
    (domain / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
    if power_limit_uw is not None:
        (domain / "constraint_0_power_limit_uw").write_text(f"{power_limit_uw}\n")
    return domain


@pytest.fixture
def powercap(tmp_path) -> Path:
    """Two package domains, one with a subdomain (its cores), and the control directory itself."""
    root = tmp_path / "powercap"
    (root / "intel-rapl").mkdir(parents=True)
    rapl_domain(root, "intel-rapl:0", 1_000_000)
    rapl_domain(root, "intel-rapl:0:0", 500_000)
    rapl_domain(root, "intel-rapl:1", MAX_RANGE_UJ - 10_000_000_000)  # about to wrap
    return root


def set_counter(domain: Path, energy_uj: int):
    (domain / "energy_uj").write_text(f"{energy_uj}\n")


def test_cpu_energy_sums_the_packages_across_a_wraparound_and_ignores_subdomains(tmp_path, powercap):
    def cpus_work():
        set_counter(powercap / "intel-rapl:0", 1_000_000 + 100_000_000_000)  # 100 kJ
        set_counter(powercap / "intel-rapl:0:0", 500_000 + 90_000_000_000)  # part of package 0's
        set_counter(powercap / "intel-rapl:1", 40_000_000_000)  # went round: 10 kJ + 40 kJ

    clock = FakeClock()
    resources = measure(meter(tmp_path, clock, powercap_root=powercap), clock, 600, cpus_work)
    assert resources.metrics["resources.cpu_energy_kwh"] == pytest.approx(150_000 / 3.6e6)
    assert resources.metrics["resources.energy_kwh"] == pytest.approx(150_000 / 3.6e6)
    assert resources.tags[CPU_ENERGY_TAG].startswith("measured (RAPL package counters, 2 sockets: ")


def test_a_run_longer_than_one_counter_wrap_is_not_measurable(tmp_path, powercap):
    clock = FakeClock()
    # 262 kJ at 200 W: one wrap every ~22 min; a counter read twice cannot tell one wrap from three.
    resources = measure(meter(tmp_path, clock, powercap_root=powercap), clock, HOUR)
    assert "resources.cpu_energy_kwh" not in resources.metrics
    assert resources.tags[CPU_ENERGY_TAG].startswith("not measurable: the run (60 min) may have outlasted")


def test_unreadable_rapl_counters_are_not_measurable_and_say_so(tmp_path, powercap, monkeypatch):
    unreadable = powercap / "intel-rapl:1" / "energy_uj"
    read_text = Path.read_text

    def root_only(path, *args, **kwargs):
        # chmod cannot show this when the tests run as root, which reads everything
        if path == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", root_only)
    clock = FakeClock()
    resources = measure(meter(tmp_path, clock, powercap_root=powercap), clock, 60)
    assert resources.tags[CPU_ENERGY_TAG] == (
        f"not measurable: {unreadable} is not readable (RAPL counters are root-only on this kernel)"
    )
    assert "resources.cpu_energy_kwh" not in resources.metrics


def test_a_host_without_rapl_says_so(tmp_path):
    clock = FakeClock()
    resources = measure(meter(tmp_path, clock), clock, 60)
    assert resources.tags[CPU_ENERGY_TAG] == (
        f"not measurable: no RAPL domains under {tmp_path / 'powercap'} (not an Intel/AMD RAPL host, or a VM)"
    )


def test_energy_kwh_is_the_sum_of_gpu_and_cpu_energy(tmp_path, powercap):
    nvml = FakeNvml({"GPU-aaa": 0})

    def work():
        nvml.energy_mj["GPU-aaa"] = 360_000_000  # 0.1 kWh
        set_counter(powercap / "intel-rapl:0", 1_000_000 + 180_000_000_000)  # 0.05 kWh
        set_counter(powercap / "intel-rapl:1", MAX_RANGE_UJ - 10_000_000_000)  # idle

    clock = FakeClock()
    environ = {**SLURM_CPU_JOB, "SLURM_GPUS_ON_NODE": "1"}
    resources = measure(
        meter(tmp_path, clock, environ=environ, nvml=nvml, powercap_root=powercap), clock, 60, work
    )
    assert resources.metrics["resources.energy_kwh"] == pytest.approx(0.15)


# --- MLflow ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A local MLflow store for this module's tests (SQLite: MLflow 3.17 refuses ``file:`` stores
    unless MLFLOW_ALLOW_FILE_STORE is set; one store, as creating its schema takes seconds), with an
    experiment of its own; MLflow's global tracking URI and active experiment are put back afterwards."""
    previous = mlflow_tracking_utils._tracking_uri  # None unless set: get_tracking_uri() would invent one
    # An earlier test may have left an active experiment of another store: runs here would go there.
    previous_experiment = mlflow.tracking.fluent._active_experiment_id
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
    mlflow.set_experiment("werkbank-resources-tests")
    try:
        yield MlflowClient()
    finally:
        mlflow.set_tracking_uri(previous)
        mlflow.tracking.fluent._active_experiment_id = previous_experiment


def test_log_resources_puts_the_metrics_and_tags_on_the_active_run(store):
    resources = Resources(
        metrics={"resources.gpu_hours": 2.0, "resources.gpu_energy_kwh": 0.75},
        tags={GPU_ENERGY_TAG: "measured (NVML total energy counter, 2 GPUs)"},
    )
    with mlflow.start_run() as run:
        log_resources(resources)
    logged = store.get_run(run.info.run_id).data
    assert logged.metrics == {"resources.gpu_hours": 2.0, "resources.gpu_energy_kwh": 0.75}
    assert logged.tags[GPU_ENERGY_TAG] == "measured (NVML total energy counter, 2 GPUs)"


def test_a_measured_run_lands_in_mlflow(tmp_path, store):
    clock = FakeClock()
    resources = measure(
        meter(tmp_path, clock, environ=SLURM_GPU_JOB, nvml=FakeNvml({}, init_error=12)), clock, 90
    )
    with mlflow.start_run() as run:
        log_resources(resources)
    logged = store.get_run(run.info.run_id).data
    assert logged.metrics["resources.gpu_hours"] == pytest.approx(2 * 90 / HOUR)
    assert logged.tags[ALLOCATION_TAG] == "Slurm job 123: 4 CPUs, 2 GPUs, 1 node"
    assert logged.tags[GPU_ENERGY_TAG].startswith("not measurable: nvidia-ml-py cannot initialise NVML")


def test_log_resources_without_an_active_run_is_an_error(store):
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_resources(Resources(metrics={"resources.wall_hours": 1.0}, tags={}))
    assert mlflow.active_run() is None  # MLflow did not start a run of its own


def test_system_metrics_need_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)
    available, why = system_metrics_available(FakeNvml({"GPU-aaa": 0}))
    assert not available
    assert why.startswith("psutil is not installed")


@pytest.mark.parametrize(
    ("nvml", "gpu_part"),
    [
        (FakeNvml({"GPU-aaa": 0, "GPU-bbb": 0}), "GPU metrics of 2 GPUs (nvidia-ml-py)"),
        (FakeNvml({}, init_error=12), "no GPU metrics: nvidia-ml-py cannot initialise NVML: NVML Shared"),
    ],
)
def test_system_metrics_say_whether_gpu_metrics_come_with_them(nvml, gpu_part):
    available, why = system_metrics_available(nvml)
    assert available
    assert why.startswith("MLflow logs CPU, memory, disk and network metrics (psutil); " + gpu_part)
    assert nvml.initialised == 0


@pytest.mark.parametrize(("interval", "logged"), [("0.5", True), (None, False)])
def test_a_short_run_gets_system_metrics_only_with_a_short_sampling_interval(
    store, monkeypatch, interval, logged
):
    """The module docstring's advice: MLflow drops the samples it has not logged when the run ends,
    so a run shorter than the interval (10 s by default) logs none."""
    if interval is None:
        monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", interval)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    with mlflow.start_run(log_system_metrics=True) as run:
        time.sleep(1.2)
    metrics = store.get_run(run.info.run_id).data.metrics
    assert ("system/cpu_utilization_percentage" in metrics) is logged
