"""What one tracked run used: CPU-hours and GPU-hours of its allocation, peak GPU memory, and
energy where the hardware reports it, as metrics and tags of the MLflow run.

In a template::

    meter = ResourceMeter().start()
    with mlflow.start_run(log_system_metrics=True):
        ...  # train
        log_resources(meter.stop())

Totals come from counters read twice, at :meth:`ResourceMeter.start` and :meth:`ResourceMeter.stop`,
not from a sampler of our own: the allocation (Slurm's environment) × wall time, NVML's total
energy counter of each GPU (millijoules since the driver loaded; Volta or newer), the RAPL
package counters under ``/sys/class/powercap`` (whole CPU sockets, other jobs on the node
included; readable only by root since Linux 5.10, after the PLATYPUS side channel; a run longer
than one wrap of the counter cannot be measured from two readings), and PyTorch's peak of allocated
GPU memory (when torch sees CUDA). What cannot be measured is logged as a tag that says why.

Curves over time are MLflow's own system metrics: ``mlflow.start_run(log_system_metrics=True)``
(or ``mlflow.enable_system_metrics_logging()`` for every run) starts MLflow's thread that logs
``system/cpu_utilization_percentage``, memory, disk and network through psutil and, with
nvidia-ml-py and a GPU, ``system/gpu_0_utilization_percentage``, memory and power. Without psutil
the thread does not start (MLflow only logs an error); :func:`system_metrics_available` says
beforehand whether it will, and whether GPU metrics come with it.

MLflow (3.17) samples every 10 s and logs after ``samples_before_logging`` (1) samples. The thread
takes a sample at once, then waits; when the run ends it stops waiting and drops the samples it
has not logged yet. So a run shorter than interval × samples logs no system metrics at all; for a
smoke run of ~10 s, before ``mlflow.start_run``::

    mlflow.set_system_metrics_sampling_interval(1)  # seconds; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
    mlflow.set_system_metrics_samples_before_logging(1)  # MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING

Keep the default for long runs: each interval the thread also asks the tracking server for the
run's status.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

#: Where Linux exposes RAPL's energy counters.
POWERCAP_ROOT = Path("/sys/class/powercap")
GPU_ENERGY_TAG = "werkbank.resources.gpu_energy"
CPU_ENERGY_TAG = "werkbank.resources.cpu_energy"
ALLOCATION_TAG = "werkbank.resources.allocation"
JOULES_PER_KWH = 3.6e6
SECONDS_PER_HOUR = 3600.0
#: RAPL package domains (intel-rapl:0, intel-rapl:1); their subdomains (intel-rapl:0:0, cores or
#: DRAM) are parts of the package's energy, counting them too would count twice.
_RAPL_PACKAGE = re.compile(r"intel-rapl:\d+")


@dataclass(frozen=True)
class Resources:
    """What a run used: ``metrics`` for ``mlflow.log_metrics``, ``tags`` for ``mlflow.set_tags``."""

    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True)
class Allocation:
    """The CPUs, GPUs and nodes a run had, and where these figures came from."""

    cpus: int
    gpus: int
    nodes: int
    description: str


# --- the allocation ----------------------------------------------------------------------


def current_allocation(environ: Mapping[str, str], cuda: Any | None) -> Allocation:
    """The Slurm job's allocation when ``environ`` is a job's, else this process's CPUs (its
    affinity) and the GPUs ``cuda`` (``torch.cuda`` or None) sees."""
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        return _process_allocation(cuda)
    nodes = _int(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES"), default=1)
    gpus = _slurm_gpus_on_node(environ) * nodes
    cpus = _slurm_job_cpus(environ)
    cpus_said = _count(cpus, "CPU")
    if not cpus:
        cpus = len(os.sched_getaffinity(0))
        cpus_said = f"{_count(cpus, 'CPU')} (this process's: Slurm did not say)"
    description = f"Slurm job {job_id}: {cpus_said}, {_count(gpus, 'GPU')}, {_count(nodes, 'node')}"
    if nodes > 1 and gpus:
        # Slurm tells a job only its own node's GPU count.
        description += " (GPUs: this node's count × nodes)"
    return Allocation(cpus, gpus, nodes, description)


def _process_allocation(cuda: Any | None) -> Allocation:
    cpus = len(os.sched_getaffinity(0))
    gpus = cuda.device_count() if cuda is not None and cuda.is_available() else 0
    gpus_source = "torch is not installed" if cuda is None else "as torch.cuda sees them"
    description = (
        f"not in a Slurm job: this process's {_count(cpus, 'CPU')} (its CPU affinity), "
        f"{_count(gpus, 'GPU')} ({gpus_source})"
    )
    return Allocation(cpus, gpus, 1, description)


def _slurm_job_cpus(environ: Mapping[str, str]) -> int:
    """All of the job's CPUs: SLURM_JOB_CPUS_PER_NODE (``4(x2),8`` = 16), else this node's."""
    per_node = environ.get("SLURM_JOB_CPUS_PER_NODE", "")
    groups = re.findall(r"(\d+)(?:\(x(\d+)\))?", per_node)
    if groups and re.fullmatch(r"\d+(\(x\d+\))?(,\d+(\(x\d+\))?)*", per_node):
        return sum(int(cpus) * int(repeat or 1) for cpus, repeat in groups)
    return _int(environ.get("SLURM_CPUS_ON_NODE"), default=0)


def _slurm_gpus_on_node(environ: Mapping[str, str]) -> int:
    """SLURM_GPUS_ON_NODE, else the devices in CUDA_VISIBLE_DEVICES (Slurm sets it with --gres)."""
    if environ.get("SLURM_GPUS_ON_NODE"):
        return _int(environ["SLURM_GPUS_ON_NODE"], default=0)
    return len(_cuda_visible_entries(environ))


def _cuda_visible_entries(environ: Mapping[str, str]) -> list[str]:
    visible = environ.get("CUDA_VISIBLE_DEVICES", "")
    # Slurm writes NoDevFiles when the node has the gres but no device files; -1 hides all GPUs.
    if visible.strip() in ("", "-1", "NoDevFiles"):
        return []
    return [entry.strip() for entry in visible.split(",") if entry.strip()]


def _int(text: str | None, default: int) -> int:
    try:
        return int(text or "")
    except ValueError:
        return default


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- GPU energy: NVML's total energy counter -----------------------------------------------


class _GpuEnergy:
    """NVML's total energy counters of this session's GPUs, read at start and at end."""

    def __init__(
        self, nvml: Any = None, handles: list[Any] | None = None, start_mj: int = 0, why_not: str = ""
    ):
        self._nvml, self._handles, self._start_mj, self.why_not = nvml, handles or [], start_mj, why_not

    @classmethod
    def begin(
        cls, nvml: Any | None, allocation: Allocation, environ: Mapping[str, str], cuda_uuids: set[str]
    ) -> _GpuEnergy:
        if not allocation.gpus:
            return cls(why_not="no GPU in this session")
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                return cls(why_not="nvidia-ml-py is not installed (pip install nvidia-ml-py)")
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            return cls(why_not=f"nvidia-ml-py cannot initialise NVML: {error}")
        try:
            handles = _session_gpu_handles(nvml, environ, cuda_uuids)
            start_mj = sum(nvml.nvmlDeviceGetTotalEnergyConsumption(handle) for handle in handles)
        except nvml.NVMLError as error:
            nvml.nvmlShutdown()
            return cls(why_not=_energy_error(nvml, error))
        if not handles:
            nvml.nvmlShutdown()
            return cls(why_not="NVML sees none of this session's GPUs")
        return cls(nvml, handles, start_mj)

    def end(self) -> tuple[float | None, str]:
        """Joules used since :meth:`begin` (None when not measurable) and the tag that says so."""
        if self.why_not:
            return None, f"not measurable: {self.why_not}"
        try:
            end_mj = sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle) for handle in self._handles)
        except self._nvml.NVMLError as error:
            return None, f"not measurable: {_energy_error(self._nvml, error)}"
        finally:
            self._nvml.nvmlShutdown()
        return (end_mj - self._start_mj) / 1000, (
            f"measured (NVML total energy counter, {_count(len(self._handles), 'GPU')})"
        )


def _session_gpu_handles(nvml: Any, environ: Mapping[str, str], cuda_uuids: set[str]) -> list[Any]:
    """NVML handles of the GPUs this session uses: those torch.cuda sees (by UUID), else those in
    CUDA_VISIBLE_DEVICES (NVML indices or UUID prefixes), else every GPU NVML can open."""
    opened = _openable_handles(nvml)
    if cuda_uuids:
        return [handle for _, handle in opened if _bare_uuid(nvml.nvmlDeviceGetUUID(handle)) in cuda_uuids]
    if "CUDA_VISIBLE_DEVICES" not in environ:
        return [handle for _, handle in opened]
    visible = _cuda_visible_entries(environ)
    return [
        handle
        for index, handle in opened
        if _is_visible(index, _bare_uuid(nvml.nvmlDeviceGetUUID(handle)), visible)
    ]


def _openable_handles(nvml: Any) -> list[tuple[int, Any]]:
    # A job's device cgroup may deny it other jobs' GPUs, which NVML still counts.
    opened = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            opened.append((index, nvml.nvmlDeviceGetHandleByIndex(index)))
        except nvml.NVMLError:
            continue
    return opened


def _is_visible(index: int, uuid: str, visible: list[str]) -> bool:
    return any(
        entry == str(index) if entry.isdigit() else uuid.startswith(_bare_uuid(entry)) for entry in visible
    )


def _bare_uuid(uuid: str) -> str:
    """``GPU-58e6…`` (NVML, CUDA_VISIBLE_DEVICES) and ``58e6…`` (torch) in one spelling."""
    return str(uuid).lower().removeprefix("gpu-")


def _energy_error(nvml: Any, error: Exception) -> str:
    if getattr(error, "value", None) == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", None):
        return f"a GPU has no total energy counter (NVML: {error}; Volta and newer GPUs have one)"
    return f"NVML cannot read the GPUs' energy counters: {error}"


# --- CPU energy: RAPL's package counters ---------------------------------------------------


@dataclass(frozen=True)
class _RaplPackage:
    energy_uj: Path
    start_uj: int
    #: The counter restarts from 0 after this value.
    max_range_uj: int
    #: The package's long-term power limit; None where unreadable.
    power_limit_uw: int | None

    def used_uj(self, end_uj: int) -> int:
        # Counters are read only twice, so one wrap is all this can see (wrap_seconds guards that).
        return (
            end_uj - self.start_uj if end_uj >= self.start_uj else end_uj + self.max_range_uj - self.start_uj
        )

    def wrap_seconds(self) -> float | None:
        """The shortest time in which the counter goes round once (at the package's power limit)."""
        return self.max_range_uj / self.power_limit_uw if self.power_limit_uw else None


class _CpuEnergy:
    """The RAPL package counters of this node's CPU sockets, read at start and at end."""

    def __init__(self, packages: list[_RaplPackage] | None = None, why_not: str = ""):
        self._packages, self.why_not = packages or [], why_not

    @classmethod
    def begin(cls, powercap_root: Path) -> _CpuEnergy:
        domains = sorted(
            path for path in powercap_root.glob("intel-rapl:*") if _RAPL_PACKAGE.fullmatch(path.name)
        )
        if not domains:
            return cls(why_not=f"no RAPL domains under {powercap_root} (not an Intel/AMD RAPL host, or a VM)")
        packages = []
        for domain in domains:
            counters = _read_counters([domain / "energy_uj", domain / "max_energy_range_uj"])
            if isinstance(counters, str):
                return cls(why_not=counters)
            power_limit = _read_counters([domain / "constraint_0_power_limit_uw"])
            power_limit_uw = power_limit[0] if isinstance(power_limit, list) and power_limit[0] > 0 else None
            packages.append(_RaplPackage(domain / "energy_uj", *counters, power_limit_uw))
        return cls(packages)

    def end(self, wall_seconds: float) -> tuple[float | None, str]:
        """Joules used since :meth:`begin` (None when not measurable) and the tag that says so."""
        if self.why_not:
            return None, f"not measurable: {self.why_not}"
        ends = _read_counters([package.energy_uj for package in self._packages])
        if isinstance(ends, str):
            return None, f"not measurable: {ends}"
        for package in self._packages:
            wrap_seconds = package.wrap_seconds()
            if wrap_seconds is not None and wall_seconds > wrap_seconds:
                return None, (
                    f"not measurable: the run ({wall_seconds / 60:.0f} min) may have outlasted one wrap of "
                    f"{package.energy_uj}'s counter (~{wrap_seconds / 60:.0f} min at the package's power "
                    "limit), and it is read only at start and end"
                )
        joules = sum(package.used_uj(end) for package, end in zip(self._packages, ends, strict=True)) / 1e6
        tag = (
            f"measured (RAPL package counters, {_count(len(self._packages), 'socket')}: whole sockets, "
            "other jobs on this node included)"
        )
        if any(package.wrap_seconds() is None for package in self._packages):
            tag += (
                "; the power limit is unreadable, so a run longer than one counter wrap would be undercounted"
            )
        return joules, tag


def _read_counters(paths: list[Path]) -> list[int] | str:
    """The integers in ``paths``, or why one cannot be read."""
    values = []
    for path in paths:
        try:
            values.append(int(path.read_text()))
        except PermissionError:
            return f"{path} is not readable (RAPL counters are root-only on this kernel)"
        except (OSError, ValueError) as error:
            return f"cannot read {path}: {error}"
    return values


# --- the meter -------------------------------------------------------------------------------


class ResourceMeter:
    """Measures one run between :meth:`start` and :meth:`stop`; see the module's docstring.

    Everything it reads can be replaced for tests: ``environ`` (default ``os.environ``),
    ``powercap_root``, ``nvml`` (a pynvml-like module; default: pynvml when installed), ``cuda``
    (a torch.cuda-like module; default: torch.cuda when torch is installed) and ``clock`` (seconds).
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        powercap_root: Path = POWERCAP_ROOT,
        nvml: Any | None = None,
        cuda: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._environ = os.environ if environ is None else environ
        self._powercap_root, self._nvml, self._cuda, self._clock = powercap_root, nvml, cuda, clock
        self._started_at: float | None = None

    def start(self) -> ResourceMeter:
        """Reads the allocation and the energy counters, resets PyTorch's peak GPU memory and
        starts the wall clock. Returns the meter itself."""
        cuda = self._cuda if self._cuda is not None else _torch_cuda()
        self._cuda_in_use = cuda if cuda is not None and cuda.is_available() else None
        self._allocation = current_allocation(self._environ, cuda)
        for device in _cuda_devices(self._cuda_in_use):
            self._cuda_in_use.reset_peak_memory_stats(device)
        cuda_uuids = {
            _bare_uuid(self._cuda_in_use.get_device_properties(d).uuid)
            for d in _cuda_devices(self._cuda_in_use)
        }
        self._gpu_energy = _GpuEnergy.begin(self._nvml, self._allocation, self._environ, cuda_uuids)
        self._cpu_energy = _CpuEnergy.begin(self._powercap_root)
        self._started_at = self._clock()
        return self

    def stop(self) -> Resources:
        """What the run used since :meth:`start`. Raises ``RuntimeError`` when not started."""
        if self._started_at is None:
            raise RuntimeError("ResourceMeter.stop() needs a ResourceMeter.start() first")
        wall_seconds = self._clock() - self._started_at
        self._started_at = None
        wall_hours = wall_seconds / SECONDS_PER_HOUR
        metrics = {
            "resources.wall_hours": wall_hours,
            # Allocation × time, what the cluster accounts: not how busy the CPUs and GPUs were.
            "resources.cpu_hours": self._allocation.cpus * wall_hours,
            "resources.gpu_hours": self._allocation.gpus * wall_hours,
        }
        if self._cuda_in_use is not None:
            metrics["resources.gpu_peak_memory_gb"] = _peak_gpu_memory_gb(self._cuda_in_use)
        gpu_joules, gpu_tag = self._gpu_energy.end()
        cpu_joules, cpu_tag = self._cpu_energy.end(wall_seconds)
        energy = {"resources.gpu_energy_kwh": gpu_joules, "resources.cpu_energy_kwh": cpu_joules}
        measured = {name: joules / JOULES_PER_KWH for name, joules in energy.items() if joules is not None}
        if measured:
            metrics |= measured | {"resources.energy_kwh": sum(measured.values())}
        tags = {
            ALLOCATION_TAG: self._allocation.description,
            GPU_ENERGY_TAG: gpu_tag,
            CPU_ENERGY_TAG: cpu_tag,
        }
        return Resources(metrics, tags)


def _torch_cuda() -> Any | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda


def _cuda_devices(cuda: Any | None) -> range:
    return range(cuda.device_count()) if cuda is not None and cuda.is_available() else range(0)


def _peak_gpu_memory_gb(cuda: Any) -> float:
    """The largest device's peak of memory PyTorch allocated (what must fit on one GPU), in GB
    (10⁹ bytes, as MLflow's system metrics count megabytes)."""
    return max(cuda.max_memory_allocated(device) for device in _cuda_devices(cuda)) / 1e9


def log_resources(resources: Resources) -> None:
    """Logs ``resources`` to the active MLflow run. Raises ``RuntimeError`` when there is none
    (MLflow would start a run of its own)."""
    if mlflow.active_run() is None:
        raise RuntimeError(
            "log_resources needs an active MLflow run: call it inside `with mlflow.start_run():`"
        )
    mlflow.log_metrics(resources.metrics)
    mlflow.set_tags(resources.tags)


# --- MLflow's system metrics ------------------------------------------------------------------


def system_metrics_available(nvml: Any | None = None) -> tuple[bool, str]:
    """Whether ``mlflow.start_run(log_system_metrics=True)`` logs system metrics (it needs psutil),
    and a sentence saying which: GPU metrics need nvidia-ml-py and a GPU NVML can open."""
    try:
        import psutil  # noqa: F401  (MLflow's CPU, memory, disk and network monitors use it)
    except ImportError:
        return False, "psutil is not installed, so MLflow logs no system metrics (pip install psutil)"
    return True, f"MLflow logs CPU, memory, disk and network metrics (psutil); {_nvml_gpu_metrics(nvml)}"


def _nvml_gpu_metrics(nvml: Any | None) -> str:
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return "no GPU metrics: nvidia-ml-py is not installed"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        return f"no GPU metrics: nvidia-ml-py cannot initialise NVML: {error}"
    try:
        gpus = nvml.nvmlDeviceGetCount()
    finally:
        nvml.nvmlShutdown()
    return (
        f"GPU metrics of {_count(gpus, 'GPU')} (nvidia-ml-py)" if gpus else "no GPU metrics: NVML sees no GPU"
    )
