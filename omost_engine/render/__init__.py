"""The region-aware SDXL renderer (SPEC.md section 6)."""
