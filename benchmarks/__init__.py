"""Benchmarks: the paper's reported numbers (paper_numbers.yaml, read by spae.fewshot.table) and perf/ speed scripts."""
