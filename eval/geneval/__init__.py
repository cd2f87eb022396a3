"""GenEval-style text-to-image suite: official scoring rules, detector plug-ins, the `vqrae eval geneval` runner."""
