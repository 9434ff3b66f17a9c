"""Benchmarks: the `make bench-*` targets. Each writes its figures into docs/results/ with the
command that produced them; none of them is a test."""
