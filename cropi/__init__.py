"""cropi: Curriculum RL with Off-Policy Influence guidance (CROPI) for RLVR on language models."""

__version__ = "0.1.0"
