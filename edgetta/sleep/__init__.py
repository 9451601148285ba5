"""Sleep staging from one EEG lead: Sleep-EDF reading, the synthetic cohort, the StableSleep recipe, metrics."""
