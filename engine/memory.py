"""Memory probes of this process and of a loaded model: peak RSS (Linux ``/proc``), model footprint in bytes."""

from __future__ import annotations


def rss_peak_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def rss_mb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def footprint_bytes(lm) -> int:
    """Bytes held by the model's parameters and buffers (transformers' own count where it has one)."""
    model = lm.model
    getter = getattr(model, "get_memory_footprint", None)
    if callable(getter):
        return int(getter())
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))
