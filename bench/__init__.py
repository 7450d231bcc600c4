"""Benchmarks: one command each, numbers printed and written under bench/results/."""
