"""Edge side of cloud-edge sync: selective upload, signed parameter bundles, A/B apply (torch-free)."""
