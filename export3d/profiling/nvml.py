"""GPU clocks, power and utilisation sampled in a background thread through NVML (``nvidia-ml-py``)."""

from __future__ import annotations

import contextlib
import statistics
import threading

import torch

NVML_NO_GPU = "no GPU"


# ----------------------------------------------------------------------------------------------- NVML
class NvmlSampler:
    """Samples NVML counters of one GPU every ``interval`` seconds in a background thread."""

    FIELDS = ("gpu_util_pct", "memory_util_pct", "memory_used_mib", "power_w", "sm_clock_mhz")

    def __init__(self, device: torch.device, interval: float = 0.05):
        import pynvml

        self._nvml, self.interval = pynvml, interval
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        try:  # NVML numbers GPUs by PCI order, CUDA by speed unless CUDA_DEVICE_ORDER=PCI_BUS_ID: match the bus
            bus_id = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            self.handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        except (AttributeError, pynvml.NVMLError):
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = pynvml.nvmlDeviceGetName(self.handle)
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)

    def _read(self) -> dict[str, float]:
        n, h = self._nvml, self.handle
        util = n.nvmlDeviceGetUtilizationRates(h)
        sample = {"gpu_util_pct": float(util.gpu), "memory_util_pct": float(util.memory),
                  "memory_used_mib": n.nvmlDeviceGetMemoryInfo(h).used / 2**20,
                  "sm_clock_mhz": float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM))}  # fmt: skip
        with contextlib.suppress(n.NVMLError):  # some boards do not report power
            sample["power_w"] = n.nvmlDeviceGetPowerUsage(h) / 1000.0
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._read())
            self._stop.wait(self.interval)

    def __enter__(self) -> NvmlSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._read())
        self._nvml.nvmlShutdown()

    def summary(self) -> dict:
        out: dict = {"state": "sampled", "gpu": self.name, "samples": len(self.samples), "interval_s": self.interval}
        for key in self.FIELDS:
            values = [s[key] for s in self.samples if key in s]
            if values:
                out[key] = {"min": min(values), "mean": statistics.fmean(values), "max": max(values)}
        return out


def nvml_state(device: torch.device) -> str:
    """``"no GPU"``, ``"not sampled (--device cpu)"`` or ``"available"``, as NVML sees this machine."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, or no device
        return NVML_NO_GPU
    if count == 0:
        return NVML_NO_GPU
    return "available" if device.type == "cuda" else "not sampled (--device cpu)"
