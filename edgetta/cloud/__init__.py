"""Cloud side of cloud-edge sync: the HTTP service and the CEMA-style distillation learner (torch allowed)."""
