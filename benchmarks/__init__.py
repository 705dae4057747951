"""`make bench`: speed, overhead, reuse, memory and scaling of the pipeline on this machine."""
