"""Parity: compare fp32 torch, the IR (float and simulated) and every artifact on real inputs."""
