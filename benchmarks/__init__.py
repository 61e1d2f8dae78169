"""edgeloop's benchmarks: each compares our code with a raw baseline doing the same work in the same run."""
