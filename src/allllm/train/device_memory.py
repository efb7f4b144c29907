"""``--device-memory``: a device's memory in bytes, from a size or a known GPU's name.

Kept apart from the plan so the CLI can check the option before anything heavy loads.
"""

from __future__ import annotations

import re

from allllm.errors import ConfigError

MIB = 2**20

# Memory as nvidia-smi reports it (memory.total, MiB); torch sees a little less (the reserve).
KNOWN_DEVICES: dict[str, int] = {
    "H100": 81559 * MIB,
    "H100-SXM": 81559 * MIB,
    "H100-PCIe": 81559 * MIB,
    "H100-NVL": 95830 * MIB,
    "H200": 143771 * MIB,
    "A100-40GB": 40960 * MIB,
    "A100-80GB": 81920 * MIB,
    "A10G": 23028 * MIB,
    "L4": 23034 * MIB,
    "L40S": 46068 * MIB,
    "RTX4090": 24564 * MIB,
}
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6}
_UNITS |= {"mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12}
_UNITS |= {"tib": 2**40}


def _squash(text: str) -> str:
    return re.sub(r"[\s_-]+", "", text).lower()


def parse_device_memory(text: str) -> int:
    """``80GiB``, ``80GB``, ``141G``, ``24GiB`` or a known device name (``H100``) → bytes.

    GB/MB/KB/TB are decimal (10⁹ ...), GiB/G and their kin binary (2³⁰ ...), a bare
    number is bytes. Names ignore case, spaces, ``-`` and ``_``.
    """
    names = {_squash(name): size for name, size in KNOWN_DEVICES.items()}
    raw = text.strip()
    if _squash(raw) in names:
        return names[_squash(raw)]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", raw)
    unit = match.group(2).lower() if match else None
    if match and unit in _UNITS and float(match.group(1)) > 0:
        return int(float(match.group(1)) * _UNITS[unit])
    raise ConfigError(
        f"--device-memory {text!r} is neither a size nor a known device",
        "give a size like 80GiB, 80GB or 141G, or one of " + ", ".join(KNOWN_DEVICES),
    )
