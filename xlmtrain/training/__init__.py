"""Fault-tolerance pieces for training: atomic checkpoint IO, resume discovery, preemption handling."""
